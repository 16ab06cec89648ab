/* reactor native module: the per-turn I/O glue (see _reactor.h and build_ffi.py). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#ifdef __linux__
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#else
#include <sys/event.h>
#include <sys/time.h>
#endif

#include "_reactor.h"

#define ROW(F, A, B, C) do { rows[4*nr] = (F); rows[4*nr+1] = (int32_t)(A); \
    rows[4*nr+2] = (int32_t)(B); rows[4*nr+3] = (C); nr++; } while (0)
#define ROW_RESERVE 4          /* rows kept free for a PARTIAL / error row after splitting */
#define ACCEPTS_PER_TURN 64

/* ---- frame splitting for the built-in codecs ------------------------------------------- */

static const unsigned char *pg_find(const unsigned char *h, int64_t hn, const unsigned char *n, int nn)
{
    if (nn == 1) return memchr(h, n[0], (size_t)hn);
    while (hn >= nn) {
        const unsigned char *p = memchr(h, n[0], (size_t)(hn - nn + 1));
        if (!p) return NULL;
        if (memcmp(p, n, (size_t)nn) == 0) return p;
        hn -= (p - h) + 1; h = p + 1;
    }
    return NULL;
}

static int32_t clamp32(int64_t v) { return v > INT32_MAX ? INT32_MAX : (int32_t)v; }

/* Emit a PG_R_FRAME row (fd, base + offset, length) for every complete frame in buf[0:len).
   Returns the bytes consumed; on a bad frame emits PG_R_FRAME_ERROR (fd, reason, length) and
   returns -1.  Stops early, leaving the rest unconsumed, when `maxrows` is reached. */
static int64_t split_frames(const pg_codec *c, const unsigned char *buf, int64_t len, int fd,
                            int64_t base, int32_t *rows, int *pnr, int maxrows)
{
    int nr = *pnr;
    int64_t pos = 0;
    if (c->type == PG_CODEC_LENGTH) {
        int64_t hdr_end = (int64_t)c->len_offset + c->len_size;
        while (nr < maxrows && len - pos >= hdr_end) {
            const unsigned char *h = buf + pos + c->len_offset;
            uint64_t v = 0;
            int i;
            if (c->little) for (i = c->len_size - 1; i >= 0; i--) v = (v << 8) | h[i];
            else for (i = 0; i < c->len_size; i++) v = (v << 8) | h[i];
            int64_t frame = v > (uint64_t)INT32_MAX * 4 ? INT64_MAX : (int64_t)v + c->adjust + hdr_end;
            if (frame < hdr_end || c->strip > frame) {
                ROW(fd, PG_FRAME_BAD_LENGTH, clamp32(frame), PG_R_FRAME_ERROR); *pnr = nr; return -1;
            }
            if (frame > c->max_frame) {
                ROW(fd, PG_FRAME_TOO_LONG, clamp32(frame), PG_R_FRAME_ERROR); *pnr = nr; return -1;
            }
            if (len - pos < frame) break;
            ROW(fd, base + pos + c->strip, frame - c->strip, PG_R_FRAME);
            pos += frame;
        }
    } else if (c->type == PG_CODEC_DELIMITER) {
        /* bytes that may sit before a delimiter of a frame that is not too long yet */
        int64_t slack = c->max_frame + c->strip_cr + c->delim_len - 1;
        while (nr < maxrows && pos < len) {
            const unsigned char *s = buf + pos;
            const unsigned char *d = pg_find(s, len - pos, c->delim, c->delim_len);
            if (!d) {
                if (len - pos > slack) {
                    ROW(fd, PG_FRAME_TOO_LONG, clamp32(len - pos), PG_R_FRAME_ERROR); *pnr = nr; return -1;
                }
                break;
            }
            int64_t flen = d - s;
            if (c->strip_cr && flen > 0 && s[flen - 1] == '\r') flen--;
            if (flen > c->max_frame) {
                ROW(fd, PG_FRAME_TOO_LONG, clamp32(flen), PG_R_FRAME_ERROR); *pnr = nr; return -1;
            }
            ROW(fd, base + pos, flen, PG_R_FRAME);
            pos += (d - s) + c->delim_len;
        }
    } else if (c->type == PG_CODEC_FIXED) {
        while (nr < maxrows && len - pos >= c->fixed) {
            ROW(fd, base + pos, c->fixed, PG_R_FRAME);
            pos += c->fixed;
        }
    }
    *pnr = nr;
    return pos;
}

int64_t pg_split(const pg_codec *codec, const char *buf, int64_t len, int fd,
                 int32_t *rows, int maxrows, int *nrows)
{
    *nrows = 0;
    return split_frames(codec, (const unsigned char *)buf, len, fd, 0, rows, nrows, maxrows);
}

/* ---- readiness: one backend-neutral handler, two backends ----------------------------- */

static int32_t addr_hash(const struct sockaddr_storage *ss)
{
    const unsigned char *p = NULL;
    size_t n = 0;
    if (ss->ss_family == AF_INET) { p = (const unsigned char *)&((const struct sockaddr_in *)ss)->sin_addr; n = 4; }
    else if (ss->ss_family == AF_INET6) { p = (const unsigned char *)&((const struct sockaddr_in6 *)ss)->sin6_addr; n = 16; }
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 16777619u; }
    return (int32_t)(h & 0x7fffffff);
}

static int accept_nb(int lfd, struct sockaddr_storage *ss, socklen_t *sl)
{
#ifdef __linux__
    return accept4(lfd, (struct sockaddr *)ss, sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    int c = accept(lfd, (struct sockaddr *)ss, sl);
    if (c >= 0) {
        int one = 1;
        fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
        fcntl(c, F_SETFD, FD_CLOEXEC);
#ifdef SO_NOSIGPIPE
        setsockopt(c, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
        (void)one;
    }
    return c;
#endif
}

/* The rows for `r` bytes of fd just read into the arena at `at` (frames split by the codec, the
   unfinished tail as PG_R_PARTIAL; PG_R_DATA without a codec), starting at row `nr`; returns
   the new row count.  Shared with the io_uring backend (_uring.c). */
int pg_read_rows(pg_loop *L, int fd, int64_t at, int64_t r, int nr)
{
    int32_t *rows = L->rows;
    if (L->codec.type) {
        int first = nr;
        int64_t done = split_frames(&L->codec, (unsigned char *)L->arena + at, r, fd, at,
                                    rows, &nr, L->maxrows - ROW_RESERVE);
        if (done > 0 && L->codec.lines && nr - first > 1) {
            int small = 1;   /* one row for the run when every frame is small */
            for (int i = first; i < nr && small; i++)
                small = rows[4 * i + 3] == PG_R_FRAME && rows[4 * i + 2] < L->codec.small;
            if (small) { nr = first; ROW(fd, at, done, PG_R_LINES); }
        }
        if (done >= 0 && done < r) ROW(fd, at + done, r - done, PG_R_PARTIAL);
    } else {
        ROW(fd, at, r, PG_R_DATA);
    }
    return nr;
}

/* FNV-1a of a peer address (source_addr_hash balancing); shared with _uring.c. */
int32_t pg_addr_hash(const struct sockaddr_storage *ss)
{
    return addr_hash(ss);
}

typedef struct {
    pg_loop *L;
    int64_t used;     /* arena bytes filled this turn */
    int nr;           /* rows emitted */
} turn_t;

static void handle_event(turn_t *t, int fd, int kind, int readable, int writable)
{
    pg_loop *L = t->L;
    int32_t *rows = L->rows;
    int nr = t->nr;
    int flags = fd < L->nflags ? L->fdflags[fd] : 0;
    if (kind == PG_K_UDP) {          /* reactor/udp.py reads and writes it (pg_udp_recv/send) */
        ROW(fd, (readable ? 1 : 0) | (writable ? 2 : 0), 0, PG_R_UDP);
    } else if (kind == PG_K_WAKE) {
        char drain[64];
        while (read(fd, drain, sizeof drain) > 0) {}
        ROW(fd, 0, 0, PG_R_WAKE);
    } else if (kind == PG_K_LISTEN) {
        for (int k = 0; k < ACCEPTS_PER_TURN && nr + ROW_RESERVE <= L->maxrows; k++) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            int c = accept_nb(fd, &ss, &sl);
            if (c < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK) ROW(fd, errno, 0, PG_R_ACCEPT_ERROR);
                break;
            }
            if (flags & PG_F_NODELAY) {
                int one = 1;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            }
            /* the address accept returned, kept for peer_addr: after a reset getpeername fails */
            if (L->addrs && c < L->nflags) {
                size_t n = sl < (socklen_t)L->addr_size ? (size_t)sl : (size_t)L->addr_size;
                memset(L->addrs + (size_t)c * L->addr_size, 0, (size_t)L->addr_size);
                memcpy(L->addrs + (size_t)c * L->addr_size, &ss, n);
            }
            ROW(fd, c, addr_hash(&ss), PG_R_ACCEPT);
        }
    } else {
        if (writable) ROW(fd, 0, 0, PG_R_WRITABLE);
        if (readable) {
            if (flags & PG_F_PYREAD) {
                ROW(fd, 0, 0, PG_R_READABLE);
            } else if (flags & PG_F_DISCARD) {
                /* lingering close: read into the free end of the arena without keeping it */
                int64_t room = L->arena_size - t->used;
                if (room > 65536) room = 65536;
                if (room > 0) {
                    ssize_t r = read(fd, L->arena + t->used, (size_t)room);
                    if (r == 0) ROW(fd, 0, 0, PG_R_EOF);
                    else if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                        ROW(fd, errno, 0, PG_R_ERROR);
                }
            } else {
                int64_t room = L->arena_size - t->used;
                if (room > L->read_max) room = L->read_max;
                if (room >= 4096 || room >= L->read_max) {
                    ssize_t r = read(fd, L->arena + t->used, (size_t)room);
                    if (r > 0) {
                        int64_t at = t->used;
                        t->used += r;
                        nr = pg_read_rows(L, fd, at, r, nr);
                    } else if (r == 0) {
                        ROW(fd, 0, 0, PG_R_EOF);
                    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                        ROW(fd, errno, 0, PG_R_ERROR);
                    }
                }
                /* else: the arena is full this turn; level-triggered readiness reports it again */
            }
        }
    }
    t->nr = nr;
}

#ifdef __linux__

int pg_event_size(void) { return (int)sizeof(struct epoll_event); }
int pg_sockaddr_size(void) { return (int)sizeof(struct sockaddr_storage); }
int pg_poller_open(void) { int r = epoll_create1(EPOLL_CLOEXEC); return r < 0 ? -errno : r; }

/* op: 1 add, 2 modify, 3 delete.  Level-triggered; EPOLLOUT only while asked for. */
int pg_ctl(int pfd, int op, int fd, int kind, int readable, int writable)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = (readable ? EPOLLIN : 0) | (writable ? EPOLLOUT : 0);
    ev.data.u64 = (uint32_t)fd | ((uint64_t)(uint32_t)kind << 32);
    int o = op == 1 ? EPOLL_CTL_ADD : op == 2 ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
    return epoll_ctl(pfd, o, fd, &ev) < 0 ? -errno : 0;
}

int pg_poll(pg_loop *L, int timeout_ms)
{
    struct epoll_event *evs = L->events;
    int n = epoll_wait(L->pfd, evs, L->maxev, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -errno;
    turn_t t = {L, 0, 0};
    for (int i = 0; i < n && t.nr + ROW_RESERVE < L->maxrows; i++) {
        uint32_t e = evs[i].events;
        handle_event(&t, (int)(uint32_t)evs[i].data.u64, (int)(evs[i].data.u64 >> 32),
                     (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0, (e & EPOLLOUT) != 0);
    }
    L->nread += t.used;
    L->used = t.used;
    return t.nr;
}

int pg_wake_open(int *fds)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) return -errno;
    fds[0] = fds[1] = fd;
    return 0;
}

#else  /* kqueue: BSD and macOS */

int pg_event_size(void) { return (int)sizeof(struct kevent); }
int pg_sockaddr_size(void) { return (int)sizeof(struct sockaddr_storage); }
int pg_poller_open(void) { int r = kqueue(); return r < 0 ? -errno : r; }

int pg_ctl(int pfd, int op, int fd, int kind, int readable, int writable)
{
    struct kevent ch[2];
    void *ud = (void *)(uintptr_t)((uint32_t)fd | ((uint64_t)(uint32_t)kind << 32));
    int add = op != 3;
    EV_SET(&ch[0], fd, EVFILT_READ, add && readable ? EV_ADD | EV_ENABLE : EV_DELETE, 0, 0, ud);
    EV_SET(&ch[1], fd, EVFILT_WRITE, add && writable ? EV_ADD | EV_ENABLE : EV_DELETE, 0, 0, ud);
    for (int i = 0; i < 2; i++)  /* deleting a filter that was never added is not an error here */
        if (kevent(pfd, &ch[i], 1, NULL, 0, NULL) < 0 && errno != ENOENT) return -errno;
    return 0;
}

int pg_poll(pg_loop *L, int timeout_ms)
{
    struct kevent *evs = L->events;
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    int n = kevent(L->pfd, NULL, 0, evs, L->maxev, timeout_ms < 0 ? NULL : &ts);
    if (n < 0) return errno == EINTR ? 0 : -errno;
    turn_t t = {L, 0, 0};
    for (int i = 0; i < n && t.nr + ROW_RESERVE < L->maxrows; i++) {
        uint64_t ud = (uint64_t)(uintptr_t)evs[i].udata;
        int rd = evs[i].filter == EVFILT_READ, wr = evs[i].filter == EVFILT_WRITE;
        handle_event(&t, (int)(uint32_t)ud, (int)(ud >> 32), rd, wr);
    }
    L->nread += t.used;
    L->used = t.used;
    return t.nr;
}

int pg_wake_open(int *fds)
{
    if (pipe(fds) < 0) return -errno;
    for (int i = 0; i < 2; i++) {
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        fcntl(fds[i], F_SETFD, FD_CLOEXEC);
    }
    return 0;
}

#endif

int pg_wake(int wfd)
{
    uint64_t one = 1;
    ssize_t r = write(wfd, &one, sizeof one);
    return r < 0 && errno != EAGAIN ? -errno : 0;
}

/* ---- output: one sendmsg per connection for everything queued in a turn ----------------- */

#define FLUSH_IOV 256
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

/* spec holds groups [fd, nparts, (kind, a, b) x nparts] as int64 (any size fits):
     PG_O_ARENA (offset, length) in the arena; PG_O_BLOB (offset, length) in L->blob (the turn's
     coalesced small output, set by the caller before each flush); PG_O_PTR (index into L->ptrs,
     length): a pinned large buffer; PG_O_FRAME (offset, length) in the arena, framed by the
     codec: a `hdr_width`-byte length prefix (little-endian when hdr_little) and/or `suffix`.
   Writing a group stops at its first short write.  Returns the bytes written in all; each group
   the kernel did not take whole is reported in L->shortw as (group index, bytes written or
   -errno, bytes queued), L->nshort of them (room for one per group is the caller's to provide):
   what is left is the caller's to keep.  The caller closes no fd before this returns. */
static void put_uint(unsigned char *dst, uint64_t v, int width, int little)
{
    for (int i = 0; i < width; i++) {
        int sh = little ? 8 * i : 8 * (width - 1 - i);
        dst[i] = (unsigned char)(v >> sh);
    }
}

int64_t pg_flush(pg_loop *L, const int64_t *spec, int64_t nspec)
{
    const char *arena = L->arena, *blob = L->blob, *suffix = L->suffix;
    char **ptrs = L->ptrs;
    int hdr_width = L->hdr_width, hdr_little = L->hdr_little, suffix_len = L->suffix_len;
    int64_t sent = 0;
    L->nshort = 0;
    struct iovec iov[FLUSH_IOV];
    unsigned char hdr[FLUSH_IOV][8];
    int64_t pos = 0;
    int g = 0;
    while (pos + 2 <= nspec) {
        int fd = (int)spec[pos];
        int64_t np = spec[pos + 1];
        pos += 2;
        int64_t total = 0, written = 0;
        int k = 0, stop = 0;
        size_t want = 0;
        int err = 0;
        for (int64_t j = 0; j < np; j++, pos += 3) {
            int kind = (int)spec[pos];
            int64_t a = spec[pos + 1], b = spec[pos + 2];
            int k0 = k;
            switch (kind) {
            case PG_O_ARENA: iov[k].iov_base = (void *)(arena + a); iov[k++].iov_len = (size_t)b; break;
            case PG_O_BLOB: iov[k].iov_base = (void *)(blob + a); iov[k++].iov_len = (size_t)b; break;
            case PG_O_PTR: iov[k].iov_base = ptrs[a]; iov[k++].iov_len = (size_t)b; break;
            case PG_O_FRAME:
                if (hdr_width) {
                    put_uint(hdr[k], (uint64_t)b, hdr_width, hdr_little);
                    iov[k].iov_base = hdr[k]; iov[k++].iov_len = (size_t)hdr_width;
                }
                iov[k].iov_base = (void *)(arena + a); iov[k++].iov_len = (size_t)b;
                if (suffix_len) { iov[k].iov_base = (void *)suffix; iov[k++].iov_len = (size_t)suffix_len; }
                break;
            default: break;
            }
            for (int i = k0; i < k; i++) want += iov[i].iov_len;
            if (stop) { k = 0; total += (int64_t)want; want = 0; continue; }
            if (k > FLUSH_IOV - 3 || j == np - 1) {
                total += (int64_t)want;
                if (want) {
                    struct msghdr m;
                    memset(&m, 0, sizeof m);
                    m.msg_iov = iov; m.msg_iovlen = (size_t)k;
                    ssize_t r;
                    do {    /* one buffer: send() skips sendmsg's msghdr/iovec import */
                        r = k == 1 ? send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT)
                                   : sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
                    } while (r < 0 && errno == EINTR);
                    if (r < 0) { stop = 1; if (errno != EAGAIN && errno != EWOULDBLOCK) err = errno; }
                    else { written += r; if ((size_t)r < want) stop = 1; }
                }
                k = 0; want = 0;
            }
        }
        sent += written;
        if (written != total) {
            int64_t *row = L->shortw + 3 * L->nshort++;
            row[0] = g; row[1] = err ? -(int64_t)err : written; row[2] = total;
        }
        g++;
    }
    return sent;
}

/* Write n frames into dst: each a `width`-byte length (little-endian when `little`) and then
   its lens[i] bytes taken in turn from src.  Returns the bytes written. */
int64_t pg_frame_headers(const char *src, const int64_t *lens, int64_t n, int width, int little,
                         char *dst)
{
    char *out = dst;
    for (int64_t i = 0; i < n; i++) {
        put_uint((unsigned char *)out, (uint64_t)lens[i], width, little);
        out += width;
        memcpy(out, src, (size_t)lens[i]);
        out += lens[i];
        src += lens[i];
    }
    return out - dst;
}

/* ---- UDP: datagrams in batches (recvmmsg / sendmmsg on Linux) ---------------------------- */

#define UDP_BATCH_MAX 256
#ifndef MSG_TRUNC
#define MSG_TRUNC 0
#endif

/* Receive up to n datagrams into buf, datagram i at i * slot (slot bytes at most).  rows[2i] is
   its true length (MSG_TRUNC: a datagram longer than `slot` reports its length and gets
   PG_UDP_TRUNC in rows[2i+1]; its bytes are not usable), addrs + i * PG_UDP_ADDR the sender's
   address zero padded (addrs NULL: a connected socket, no addresses).  Returns how many were
   received (0: none waiting), or -errno. */
int pg_udp_recv(int fd, char *buf, int slot, int n, int32_t *rows, char *addrs)
{
    if (n > UDP_BATCH_MAX) n = UDP_BATCH_MAX;
    struct iovec iov[UDP_BATCH_MAX];
    struct sockaddr_storage ss[UDP_BATCH_MAX];
    int got = 0;
#ifdef __linux__
    struct mmsghdr mm[UDP_BATCH_MAX];
    memset(mm, 0, sizeof(struct mmsghdr) * (size_t)n);
    for (int i = 0; i < n; i++) {
        iov[i].iov_base = buf + (size_t)i * (size_t)slot;
        iov[i].iov_len = (size_t)slot;
        mm[i].msg_hdr.msg_iov = &iov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
        if (addrs) { mm[i].msg_hdr.msg_name = &ss[i]; mm[i].msg_hdr.msg_namelen = sizeof ss[i]; }
    }
    int r;
    do { r = recvmmsg(fd, mm, (unsigned)n, MSG_DONTWAIT | MSG_TRUNC, NULL); } while (r < 0 && errno == EINTR);
    if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    for (int i = 0; i < r; i++) {
        unsigned len = mm[i].msg_len;
        int trunc = (mm[i].msg_hdr.msg_flags & MSG_TRUNC) || len > (unsigned)slot;
        rows[2 * i] = (int32_t)len;
        rows[2 * i + 1] = trunc ? PG_UDP_TRUNC : 0;
        if (addrs) {
            char *dst = addrs + (size_t)i * PG_UDP_ADDR;
            size_t nl = mm[i].msg_hdr.msg_namelen < PG_UDP_ADDR ? mm[i].msg_hdr.msg_namelen : PG_UDP_ADDR;
            memset(dst, 0, PG_UDP_ADDR);
            memcpy(dst, &ss[i], nl);
        }
    }
    got = r;
#else
    for (; got < n; got++) {
        struct msghdr m;
        memset(&m, 0, sizeof m);
        iov[got].iov_base = buf + (size_t)got * (size_t)slot;
        iov[got].iov_len = (size_t)slot;
        m.msg_iov = &iov[got]; m.msg_iovlen = 1;
        if (addrs) { m.msg_name = &ss[got]; m.msg_namelen = sizeof ss[got]; }
        ssize_t r;
        do { r = recvmsg(fd, &m, MSG_DONTWAIT); } while (r < 0 && errno == EINTR);
        if (r < 0) {
            if (got) break;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        }
        rows[2 * got] = (int32_t)r;
        rows[2 * got + 1] = (m.msg_flags & MSG_TRUNC) ? PG_UDP_TRUNC : 0;
        if (addrs) {
            char *dst = addrs + (size_t)got * PG_UDP_ADDR;
            size_t nl = m.msg_namelen < PG_UDP_ADDR ? m.msg_namelen : PG_UDP_ADDR;
            memset(dst, 0, PG_UDP_ADDR);
            memcpy(dst, &ss[got], nl);
        }
    }
#endif
    return got;
}

static socklen_t udp_addr_len(const char *a)
{
    const struct sockaddr *sa = (const struct sockaddr *)a;
    return sa->sa_family == AF_INET6 ? (socklen_t)sizeof(struct sockaddr_in6)
                                     : (socklen_t)sizeof(struct sockaddr_in);
}

/* Send n datagrams: datagram i is the next lens[i] bytes of blob, to addrs + i * PG_UDP_ADDR
   (addrs NULL: a connected socket).  Returns how many the kernel took, in order; when it took
   fewer than n, *err says why the next one was not sent (EAGAIN: the socket buffer is full, keep
   the rest; anything else: that one datagram failed), else *err is 0. */
int pg_udp_send(int fd, const char *blob, const int64_t *lens, const char *addrs, int n, int *err)
{
    int sent = 0;
    *err = 0;
    while (sent < n) {
        int k = n - sent < UDP_BATCH_MAX ? n - sent : UDP_BATCH_MAX;
        struct iovec iov[UDP_BATCH_MAX];
        const char *p = blob;
        int r;
#ifdef __linux__
        struct mmsghdr mm[UDP_BATCH_MAX];
        memset(mm, 0, sizeof(struct mmsghdr) * (size_t)k);
        for (int i = 0; i < k; i++) {
            iov[i].iov_base = (void *)p;
            iov[i].iov_len = (size_t)lens[sent + i];
            p += lens[sent + i];
            mm[i].msg_hdr.msg_iov = &iov[i];
            mm[i].msg_hdr.msg_iovlen = 1;
            if (addrs) {
                const char *a = addrs + (size_t)(sent + i) * PG_UDP_ADDR;
                mm[i].msg_hdr.msg_name = (void *)a;
                mm[i].msg_hdr.msg_namelen = udp_addr_len(a);
            }
        }
        do { r = sendmmsg(fd, mm, (unsigned)k, MSG_DONTWAIT | MSG_NOSIGNAL); } while (r < 0 && errno == EINTR);
#else
        r = 0;
        for (int i = 0; i < k; i++) {
            struct msghdr m;
            memset(&m, 0, sizeof m);
            iov[i].iov_base = (void *)p;
            iov[i].iov_len = (size_t)lens[sent + i];
            m.msg_iov = &iov[i]; m.msg_iovlen = 1;
            if (addrs) {
                const char *a = addrs + (size_t)(sent + i) * PG_UDP_ADDR;
                m.msg_name = (void *)a; m.msg_namelen = udp_addr_len(a);
            }
            ssize_t w;
            do { w = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL); } while (w < 0 && errno == EINTR);
            if (w < 0) { if (!r) r = -1; break; }
            p += lens[sent + i];
            r++;
        }
#endif
        if (r < 0) { *err = errno; return sent; }
        for (int i = 0; i < r; i++) blob += lens[sent + i];
        sent += r;
        if (r < k) {   /* the next one failed: ask the kernel why with a lone send */
            continue;
        }
    }
    return sent;
}

/* ---- files: sendfile(2) from a file region to a socket ------------------------------------- */

/* Send up to `count` bytes of in_fd from `offset` to out_fd.  Returns the bytes sent (0 when the
   socket would block at once), -errno on an error, or -ENODATA when the file ends before a byte
   of the region could be sent (it is shorter than offset + count). */
int64_t pg_sendfile(int out_fd, int in_fd, int64_t offset, int64_t count)
{
    int64_t done = 0;
    while (done < count) {
        int64_t want = count - done;
        if (want > (1 << 30)) want = 1 << 30;
#ifdef __linux__
        off_t off = (off_t)(offset + done);
        ssize_t r = sendfile(out_fd, in_fd, &off, (size_t)want);
#else
        char tmp[65536];
        if (want > (int64_t)sizeof tmp) want = sizeof tmp;
        ssize_t r = pread(in_fd, tmp, (size_t)want, (off_t)(offset + done));
        if (r > 0) {
            ssize_t w = send(out_fd, tmp, (size_t)r, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0) r = -1; else r = w;
        }
#endif
        if (r > 0) { done += r; continue; }
        if (r == 0) return done ? done : -ENODATA;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return done;
        return done ? done : -errno;
    }
    return done;
}

/* ---- small socket helpers --------------------------------------------------------------- */

int pg_close(int fd) { return close(fd) < 0 ? -errno : 0; }
int pg_shutdown_write(int fd) { return shutdown(fd, SHUT_WR) < 0 ? -errno : 0; }
int pg_setsockopt_int(int fd, int level, int opt, int value)
{
    return setsockopt(fd, level, opt, &value, sizeof value) < 0 ? -errno : 0;
}
/* Linux: the kernel sends `sig` to this process when the thread that forked it exits. */
int pg_parent_death_signal(int sig)
{
#ifdef __linux__
    return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) < 0 ? -errno : 0;
#else
    (void)sig;
    return -ENOSYS;
#endif
}
