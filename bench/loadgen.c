/*
 * loadgen.c - closed-loop TCP load generator for pygev's benchmark harness.
 *
 * One thread, epoll.  Every connection keeps `pipeline` messages in flight: each reply that comes
 * back completely sends one new message.  Every reply byte is compared with what it must be.
 *
 * Request / computed-reply modes (--size is ignored; connection i's request n uses key
 * k = (37 i + n) mod 1000, so consecutive requests cycle through the keys):
 *   get     the request is the line `GET keyNNNN\n` (NNNN = k, 4 digits); the reply must be the line
 *           `value-NNNN-abcdefghijklmnopqrstuvwxyz\n` (37 bytes + newline) - examples/line_get.py's
 *           store.  Each reply is compared whole, so a reply is counted at its newline and a
 *           `NOT_FOUND` or a reply of the wrong length is an error.
 *   rpc     the request is a frame: 4-byte big-endian length (8) + op u32 + arg u32 (big-endian),
 *           op = 1 + (k & 1), arg = k * 2654435761 mod 2^32; the reply must be the frame: length (36) +
 *           status u32 (0) + result u64 (op 1: arg + 1, op 2: arg * arg) + the 24-byte tail
 *           `pygev-rpc-reply-tail-24b` - examples/rpc.py's service.  Header and body are compared.
 *
 * Echo modes:
 *   raw     the message is `size` payload bytes; the server returns the byte stream unchanged.
 *   framed  the message is a 4-byte big-endian length + `size` payload bytes; a framed echo server
 *           returns the same bytes.
 *   udp     N connected UDP sockets ("connections"), each keeping `pipeline` datagrams of `size` bytes
 *           (>= 8) in flight; a datagram is slot u32 + generation u32 + pattern bytes, and the echoed
 *           datagram must be byte-identical.  A datagram not answered within UDP_RESEND_MS is counted
 *           lost and its slot sends a new one (next generation): loss never hangs the run; late
 *           replies of an old generation are ignored (counted as "late").  "lost" is in the JSON.
 *   ws      RFC 6455: an HTTP Upgrade handshake on every connection, then masked binary frames of
 *           `size` bytes; the server must answer each with one unmasked, unfragmented binary frame
 *           holding the same payload (minimal length encoding, as every server does for one frame).
 *
 * Phases: connect everything (and handshake), then one round trip on every connection (so the server
 * has accepted and answered each before the clock starts: a connection the kernel completed but the
 * server had not accepted yet would otherwise stall its first requests for a SYN-ACK retransmit,
 * ~1 s, inside the window), warm up for --warmup seconds, measure for --duration
 * seconds.  The server's CPU time (utime+stime from /proc/<pid>/stat) is read at both ends of the
 * measurement window, so CPU per message can be compared even when this client is the bottleneck.
 *
 * Output: one JSON object on stdout (also on failure, with "error" set; exit status 1 then).
 * Build: cc -O2 -o loadgen loadgen.c   (bench/loadgen.py does this on demand).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { MODE_RAW, MODE_FRAMED, MODE_WS, MODE_GET, MODE_RPC, MODE_UDP };
static const char *const MODE_NAMES[] = {"raw", "framed", "ws", "get", "rpc", "udp"};
enum state { ST_CONNECTING, ST_HANDSHAKE, ST_PRIMING, ST_READY, ST_RUNNING };

/* RFC 6455 section 1.3 sample nonce and its accept value: a fixed, known-good test vector. */
static const char WS_KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char WS_ACCEPT[] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/* get / rpc: every request and its reply, per key; all requests of a mode have one size, all replies too */
#define NKEYS 1000
static const char RPC_TAIL[] = "pygev-rpc-reply-tail-24b";

typedef struct conn {
    int fd;
    int id;
    int state;
    uint64_t sent;          /* messages queued for sending */
    uint64_t done;          /* replies received completely and verified */
    uint64_t done_at_start; /* `done` when the measurement window opened */
    size_t recv_off;        /* bytes of the current reply received so far */
    unsigned char *wbuf;    /* unsent output: at most `pipeline` messages */
    size_t wlen, woff;
    int want_out;           /* EPOLLOUT armed */
    uint64_t *ts;           /* send time (ns) of every in-flight message, ring of `pipeline` */
    char hs[1024];          /* WebSocket handshake response */
    size_t hslen;
} conn_t;

/* settings */
static const char *g_host = "127.0.0.1";
static int g_port = 0, g_conns = 50, g_size = 64, g_pipeline = 1, g_pid = 0;
static double g_duration = 3.0, g_warmup = 1.0, g_connect_timeout = 10.0;
static int g_mode = MODE_RAW;

/* derived */
static size_t g_hdr_out, g_hdr_in, g_msg_out, g_msg_in;
static unsigned char g_hdr_out_bytes[16], g_hdr_in_bytes[16];
static unsigned char *g_pattern; /* size + 256 bytes; message payloads are windows into it */
static unsigned char *g_req_tab, *g_rep_tab; /* get / rpc: NKEYS requests of g_msg_out, replies of g_msg_in */
static const unsigned char WS_MASK[4] = {0x5a, 0xc3, 0x91, 0x2e};

static conn_t *g_c;
static int g_ep;
static int g_measuring;

/* latency histogram: log-linear, 32 sub-buckets per power of two (~3% resolution), in ns */
#define NBUCKETS 2048
static uint64_t g_hist[NBUCKETS];
static uint64_t g_hist_n, g_lat_max;
static double g_lat_sum;

static char g_error[512];
static uint64_t g_lost, g_late; /* udp mode */

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void fail(const char *fmt, ...) {
    if (g_error[0]) return; /* keep the first error */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
}

static int bucket_of(uint64_t v) {
    if (v < 64) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int idx = (msb - 4) * 32 + (int)((v >> (msb - 5)) & 31);
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static double bucket_mid(int idx) {
    if (idx < 64) return idx;
    int msb = idx / 32 + 4, sub = idx % 32;
    double lo = (double)((uint64_t)(32 + sub) << (msb - 5));
    return lo + (double)((uint64_t)1 << (msb - 5)) / 2.0;
}

static void record_latency(uint64_t ns) {
    g_hist[bucket_of(ns)]++;
    g_hist_n++;
    g_lat_sum += (double)ns;
    if (ns > g_lat_max) g_lat_max = ns;
}

static double percentile_us(double p) {
    if (!g_hist_n) return 0.0;
    uint64_t target = (uint64_t)(p * (double)g_hist_n + 0.999999), seen = 0;
    if (target < 1) target = 1;
    for (int i = 0; i < NBUCKETS; i++) {
        seen += g_hist[i];
        if (seen >= target) return bucket_mid(i) / 1000.0;
    }
    return (double)g_lat_max / 1000.0;
}

/* utime + stime of a process, in seconds; -1 when unreadable */
static double proc_cpu_s(int pid) {
    if (pid <= 0) return -1.0;
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1.0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1.0;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p) return -1.0;
    unsigned long long utime = 0, stime = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1.0;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* Payload of message `seq` on connection `c`: a window into the pattern that shifts with every
 * message, so a lost, duplicated or reordered message cannot pass verification. */
static const unsigned char *payload_of(const conn_t *c, uint64_t seq) {
    return g_pattern + (size_t)((seq * 7u + (uint64_t)c->id * 13u) % 256u);
}

static int table_mode(void) { return g_mode == MODE_GET || g_mode == MODE_RPC; }

static size_t key_of(const conn_t *c, uint64_t seq) {
    return (size_t)(((uint64_t)c->id * 37u + seq) % NKEYS);
}

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (24 - 8 * i));
}

/* Fill g_req_tab / g_rep_tab and the message sizes for the get or rpc mode. */
static void build_tables(void) {
    g_msg_out = g_mode == MODE_GET ? 12 : 4 + 8;
    g_msg_in = g_mode == MODE_GET ? 38 : 4 + 36;
    g_req_tab = malloc(NKEYS * g_msg_out);
    g_rep_tab = malloc(NKEYS * g_msg_in);
    for (uint32_t k = 0; k < NKEYS; k++) {
        unsigned char *req = g_req_tab + k * g_msg_out, *rep = g_rep_tab + k * g_msg_in;
        if (g_mode == MODE_GET) {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "GET key%04u\n", k);
            memcpy(req, tmp, g_msg_out);
            snprintf(tmp, sizeof tmp, "value-%04u-abcdefghijklmnopqrstuvwxyz\n", k);
            memcpy(rep, tmp, g_msg_in);
        } else {
            uint32_t op = 1 + (k & 1), arg = k * 2654435761u;
            uint64_t result = op == 1 ? (uint64_t)arg + 1 : (uint64_t)arg * arg;
            put_u32(req, 8);
            put_u32(req + 4, op);
            put_u32(req + 8, arg);
            put_u32(rep, 36);
            put_u32(rep + 4, 0);
            put_u32(rep + 8, (uint32_t)(result >> 32));
            put_u32(rep + 12, (uint32_t)result);
            memcpy(rep + 16, RPC_TAIL, 24);
        }
    }
}

static size_t ws_header(unsigned char *h, size_t len, int masked) {
    size_t n = 0;
    h[n++] = 0x82; /* FIN + binary */
    unsigned char m = masked ? 0x80 : 0;
    if (len < 126) {
        h[n++] = m | (unsigned char)len;
    } else if (len < 65536) {
        h[n++] = m | 126;
        h[n++] = (unsigned char)(len >> 8);
        h[n++] = (unsigned char)len;
    } else {
        h[n++] = m | 127;
        for (int i = 7; i >= 0; i--) h[n++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    if (masked) {
        memcpy(h + n, WS_MASK, 4);
        n += 4;
    }
    return n;
}

static void set_events(conn_t *c, int out) {
    if (c->want_out == out) return;
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = out;
}

/* Write as much queued output as the socket takes; arm EPOLLOUT for the rest. */
static int flush_out(conn_t *c) {
    while (c->woff < c->wlen) {
        ssize_t n = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
        if (n > 0) {
            c->woff += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            set_events(c, 1);
            return 0;
        } else {
            fail("connection %d: write failed after %llu replies: %s", c->id,
                 (unsigned long long)c->done, strerror(errno));
            return -1;
        }
    }
    c->wlen = c->woff = 0;
    set_events(c, 0);
    return 0;
}

/* Queue `count` new messages and try to send them in one write. */
static int send_msgs(conn_t *c, int count, uint64_t now) {
    if (c->woff) { /* compact what is left of an earlier partial write */
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff;
        c->woff = 0;
    }
    for (int k = 0; k < count; k++) {
        unsigned char *dst = c->wbuf + c->wlen;
        const unsigned char *src = payload_of(c, c->sent);
        memcpy(dst, g_hdr_out_bytes, g_hdr_out);
        dst += g_hdr_out;
        if (table_mode()) {
            memcpy(dst, g_req_tab + key_of(c, c->sent) * g_msg_out, g_msg_out);
        } else if (g_mode == MODE_WS) {
            for (int i = 0; i < g_size; i++) dst[i] = src[i] ^ WS_MASK[i & 3];
        } else {
            memcpy(dst, src, (size_t)g_size);
        }
        c->wlen += g_msg_out;
        c->ts[c->sent % (uint64_t)g_pipeline] = now;
        c->sent++;
    }
    return flush_out(c);
}

/* Check received bytes against the expected replies; count and time every complete one. */
static int consume(conn_t *c, const unsigned char *p, size_t n, uint64_t now) {
    int completed = 0;
    while (n) {
        if (c->done >= c->sent) {
            fail("connection %d: %zu unexpected bytes after reply %llu", c->id, n,
                 (unsigned long long)c->done);
            return -1;
        }
        size_t take = g_msg_in - c->recv_off;
        if (take > n) take = n;
        size_t off = c->recv_off, i = 0;
        while (i < take) { /* header part, then payload part */
            const unsigned char *want;
            size_t len;
            if (table_mode()) {
                want = g_rep_tab + key_of(c, c->done) * g_msg_in + off + i;
                len = g_msg_in - (off + i);
            } else if (off + i < g_hdr_in) {
                want = g_hdr_in_bytes + off + i;
                len = g_hdr_in - (off + i);
            } else {
                want = payload_of(c, c->done) + (off + i - g_hdr_in);
                len = g_msg_in - (off + i);
            }
            if (len > take - i) len = take - i;
            if (memcmp(p + i, want, len) != 0) {
                size_t j = 0;
                while (p[i + j] == want[j]) j++;
                if (g_mode == MODE_GET) { /* show the line: it is text */
                    size_t k = 0;
                    while (i + j + k < n && k < 40 && p[i + j + k] != '\n') k++;
                    fail("connection %d: reply %llu byte %zu is 0x%02x, expected 0x%02x (got \"%.*s\")",
                         c->id, (unsigned long long)c->done, off + i + j, p[i + j], want[j], (int)k,
                         (const char *)p + i + j);
                } else {
                    fail("connection %d: reply %llu byte %zu is 0x%02x, expected 0x%02x", c->id,
                         (unsigned long long)c->done, off + i + j, p[i + j], want[j]);
                }
                return -1;
            }
            i += len;
        }
        c->recv_off += take;
        p += take;
        n -= take;
        if (c->recv_off == g_msg_in) {
            c->recv_off = 0;
            if (g_measuring) record_latency(now - c->ts[c->done % (uint64_t)g_pipeline]);
            c->done++;
            completed++;
        }
    }
    return completed;
}

/* One request whose reply makes the connection ready (phase 1). */
static int start_priming(conn_t *c) {
    c->state = ST_PRIMING;
    return send_msgs(c, 1, now_ns());
}

static int start_handshake(conn_t *c) {
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     g_host, g_port, WS_KEY);
    memcpy(c->wbuf, req, (size_t)n);
    c->wlen = (size_t)n;
    c->woff = 0;
    c->state = ST_HANDSHAKE;
    return flush_out(c);
}

/* Read the 101 response; it must accept our key and carry nothing after the header. */
static int read_handshake(conn_t *c) {
    ssize_t n = read(c->fd, c->hs + c->hslen, sizeof c->hs - 1 - c->hslen);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (n <= 0) {
        fail("connection %d: closed during the WebSocket handshake", c->id);
        return -1;
    }
    c->hslen += (size_t)n;
    c->hs[c->hslen] = 0;
    char *end = strstr(c->hs, "\r\n\r\n");
    if (!end) {
        if (c->hslen >= sizeof c->hs - 1) {
            fail("connection %d: handshake response too long", c->id);
            return -1;
        }
        return 0;
    }
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0 || !strcasestr(c->hs, WS_ACCEPT)) {
        fail("connection %d: bad handshake response: %.80s", c->id, c->hs);
        return -1;
    }
    if ((size_t)(end + 4 - c->hs) != c->hslen) {
        fail("connection %d: data after the handshake response", c->id);
        return -1;
    }
    return start_priming(c);
}

/* Read and check replies; a running connection sends one new message per reply.  Returns 1 when
 * the priming reply arrived (the connection is ready), 0 otherwise, -1 on failure. */
static int handle_read(conn_t *c, unsigned char *buf, size_t cap) {
    for (;;) {
        ssize_t n = read(c->fd, buf, cap);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 0;
        if (n <= 0) {
            fail("connection %d: %s after %llu replies", c->id, n == 0 ? "closed by the server" : strerror(errno),
                 (unsigned long long)c->done);
            return -1;
        }
        uint64_t now = now_ns();
        int completed = consume(c, buf, (size_t)n, now);
        if (completed < 0) return -1;
        if (completed && c->state == ST_PRIMING) {
            c->state = ST_READY;
            return 1;
        }
        if (completed && send_msgs(c, completed, now) < 0) return -1;
        if ((size_t)n < cap) return 0;
    }
}

static int open_conn(conn_t *c, const struct sockaddr_in *sa) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fail("socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (const struct sockaddr *)sa, sizeof *sa) < 0 && errno != EINPROGRESS) {
        fail("connect: %s", strerror(errno));
        return -1;
    }
    c->state = ST_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->want_out = 1;
    return 0;
}

static int on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        fail("connection %d: connect failed: %s", c->id, strerror(err));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = 0;
    return g_mode == MODE_WS ? start_handshake(c) : start_priming(c);
}

static void print_json(double window, uint64_t msgs, double scpu, double ccpu, uint64_t min_c, uint64_t max_c,
                       int stalled, int connected);

/* ---- the measurement window (both modes) ---------------------------------------------------- */
typedef struct {
    uint64_t t0, t1, msgs0, msgs1, min_c, max_c; /* msgs: the connections' counts summed at each end */
    double scpu0, scpu1, ccpu0, ccpu1;           /* server (-1: unknown) and own CPU seconds */
    int stalled;
} window_t;

static const window_t WINDOW_INIT = {.min_c = UINT64_MAX, .scpu0 = -1, .scpu1 = -1};

/* the warm-up is over: measure from now (then each connection's count is marked) */
static void window_open(window_t *w) {
    g_measuring = 1;
    w->scpu0 = proc_cpu_s(g_pid);
    w->ccpu0 = self_cpu_s();
    w->t0 = now_ns();
}

/* a connection's count as the window opens (returned, to keep as its done_at_start) */
static uint64_t window_mark(window_t *w, uint64_t done) {
    w->msgs0 += done;
    return done;
}

static void window_close(window_t *w) {
    w->t1 = now_ns();
    w->scpu1 = proc_cpu_s(g_pid);
    w->ccpu1 = self_cpu_s();
}

/* a connection's count once the window closed; its socket is closed here */
static void window_count(window_t *w, uint64_t done, uint64_t done_at_start, int fd) {
    uint64_t d = done - done_at_start;
    w->msgs1 += done;
    if (d < w->min_c) w->min_c = d;
    if (d > w->max_c) w->max_c = d;
    if (d == 0) w->stalled++;
    if (fd >= 0) close(fd);
}

/* the JSON line of the run; returns the exit code */
static int window_report(window_t *w, int connected) {
    if (!g_measuring) { /* failed before the window opened */
        w->min_c = 0;
        w->stalled = g_conns;
        w->msgs1 = w->msgs0 = 0;
    }
    double window = g_measuring ? (double)(w->t1 - w->t0) / 1e9 : 0.0;
    if (g_measuring && w->msgs1 == w->msgs0) fail("no reply completed in the %.1f s measurement window", window);
    double scpu = (w->scpu0 >= 0 && w->scpu1 >= 0) ? w->scpu1 - w->scpu0 : -1.0;
    print_json(window, w->msgs1 - w->msgs0, scpu, w->ccpu1 - w->ccpu0, w->min_c, w->max_c, w->stalled, connected);
    return g_error[0] ? 1 : 0;
}

/* ---- udp mode ---------------------------------------------------------------------------- */
#define UDP_RESEND_MS 200
#define UDP_BATCH 64

typedef struct {
    int fd, id, ready;
    uint32_t *gen;          /* per slot: the generation in flight */
    uint64_t *ts;           /* per slot: when it was sent (ns) */
    uint64_t done, done_at_start;
} udp_t;

static void udp_fill(unsigned char *d, const udp_t *u, uint32_t slot, uint32_t gen) {
    for (int i = 0; i < 4; i++) d[i] = (unsigned char)(slot >> (8 * i));
    for (int i = 0; i < 4; i++) d[4 + i] = (unsigned char)(gen >> (8 * i));
    memcpy(d + 8, g_pattern + (size_t)((gen * 7u + slot * 3u + (uint32_t)u->id * 13u) % 256u), (size_t)g_size - 8);
}

/* send the current generation of `n` slots (indices in `slots`) in one sendmmsg */
static int udp_send(udp_t *u, const uint32_t *slots, int n, uint64_t now, unsigned char *buf) {
    struct mmsghdr mm[UDP_BATCH];
    struct iovec iov[UDP_BATCH];
    int done = 0;
    while (done < n) {
        int k = n - done < UDP_BATCH ? n - done : UDP_BATCH;
        memset(mm, 0, sizeof(mm[0]) * (size_t)k);
        for (int i = 0; i < k; i++) {
            uint32_t s = slots[done + i];
            unsigned char *d = buf + (size_t)i * (size_t)g_size;
            udp_fill(d, u, s, u->gen[s]);
            u->ts[s] = now;
            iov[i].iov_base = d;
            iov[i].iov_len = (size_t)g_size;
            mm[i].msg_hdr.msg_iov = &iov[i];
            mm[i].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(u->fd, mm, (unsigned)k, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == ENOBUFS || errno == ECONNREFUSED) return 0; /* resent on timeout */
            fail("udp socket %d: send failed: %s", u->id, strerror(errno));
            return -1;
        }
        done += k;    /* a datagram the kernel refused is resent on timeout like a lost one */
    }
    return 0;
}

/* read every waiting reply; verify; answer each with the next generation of its slot */
static int udp_read(udp_t *u, unsigned char *rbuf, unsigned char *sbuf, int running) {
    struct mmsghdr mm[UDP_BATCH];
    struct iovec iov[UDP_BATCH];
    unsigned char want[65536];
    size_t cap = (size_t)g_size + 64;
    for (;;) {
        memset(mm, 0, sizeof mm);
        for (int i = 0; i < UDP_BATCH; i++) {
            iov[i].iov_base = rbuf + (size_t)i * cap;
            iov[i].iov_len = cap;
            mm[i].msg_hdr.msg_iov = &iov[i];
            mm[i].msg_hdr.msg_iovlen = 1;
        }
        int r = recvmmsg(u->fd, mm, UDP_BATCH, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == ECONNREFUSED) return 0;
            fail("udp socket %d: receive failed: %s", u->id, strerror(errno));
            return -1;
        }
        uint64_t now = now_ns();
        uint32_t next[UDP_BATCH];
        int nn = 0;
        for (int i = 0; i < r; i++) {
            unsigned char *d = rbuf + (size_t)i * cap;
            if (mm[i].msg_len != (unsigned)g_size) {
                fail("udp socket %d: a reply of %u bytes, expected %d", u->id, mm[i].msg_len, g_size);
                return -1;
            }
            uint32_t slot = 0, gen = 0;
            for (int k = 0; k < 4; k++) slot |= (uint32_t)d[k] << (8 * k);
            for (int k = 0; k < 4; k++) gen |= (uint32_t)d[4 + k] << (8 * k);
            if (slot >= (uint32_t)g_pipeline || gen != u->gen[slot]) { g_late++; continue; }
            udp_fill(want, u, slot, gen);
            if (memcmp(d, want, (size_t)g_size) != 0) {
                fail("udp socket %d: reply for slot %u generation %u differs from the datagram sent", u->id, slot, gen);
                return -1;
            }
            if (g_measuring) record_latency(now - u->ts[slot]);
            u->done++;
            u->gen[slot]++;
            if (!u->ready) u->ready = 1;
            if (running) next[nn++] = slot;
        }
        if (nn && udp_send(u, next, nn, now, sbuf) < 0) return -1;
        if (r < UDP_BATCH) return 0;
    }
}

/* slots unanswered for UDP_RESEND_MS: counted lost, resent as their next generation */
static int udp_resend(udp_t *u, uint64_t now, unsigned char *sbuf, int nslots) {
    uint32_t again[4096];
    int n = 0;
    for (int s = 0; s < nslots && n < 4096; s++) {
        if (now - u->ts[s] >= (uint64_t)UDP_RESEND_MS * 1000000ull) {
            u->gen[s]++;
            g_lost++;
            again[n++] = (uint32_t)s;
        }
    }
    return n ? udp_send(u, again, n, now, sbuf) : 0;
}

static int run_udp(const struct sockaddr_in *sa) {
    if (g_size < 8 || g_size > 65000) {
        fprintf(stderr, "loadgen: --size must be 8..65000 in udp mode\n");
        return 2;
    }
    g_msg_out = g_msg_in = (size_t)g_size;
    udp_t *us = calloc((size_t)g_conns, sizeof *us);
    unsigned char *rbuf = malloc((size_t)UDP_BATCH * ((size_t)g_size + 64));
    unsigned char *sbuf = malloc((size_t)UDP_BATCH * (size_t)g_size);
    struct epoll_event *evs = calloc(1024, sizeof *evs);
    for (int i = 0; i < g_conns && !g_error[0]; i++) {
        udp_t *u = &us[i];
        u->id = i;
        u->gen = calloc((size_t)g_pipeline, sizeof(uint32_t));
        u->ts = calloc((size_t)g_pipeline, sizeof(uint64_t));
        u->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (u->fd < 0 || connect(u->fd, (const struct sockaddr *)sa, sizeof *sa) < 0) {
            fail("udp socket %d: %s", i, strerror(errno));
            break;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = u};
        epoll_ctl(g_ep, EPOLL_CTL_ADD, u->fd, &ev);
    }
    /* phase 1: one round trip per socket (slot 0), resent until answered */
    uint64_t t_start = now_ns(), deadline = t_start + (uint64_t)(g_connect_timeout * 1e9);
    uint32_t zero = 0;
    for (int i = 0; i < g_conns && !g_error[0]; i++) udp_send(&us[i], &zero, 1, t_start, sbuf);
    int ready = 0;
    while (!g_error[0]) {
        ready = 0;
        for (int i = 0; i < g_conns; i++) ready += us[i].ready;
        if (ready == g_conns) break;
        uint64_t now = now_ns();
        if (now >= deadline) {
            fail("only %d of %d UDP sockets got a first reply after %.1f s", ready, g_conns, g_connect_timeout);
            break;
        }
        int n = epoll_wait(g_ep, evs, 1024, 20);
        for (int k = 0; k < n && !g_error[0]; k++) udp_read(evs[k].data.ptr, rbuf, sbuf, 0);
        now = now_ns();
        for (int i = 0; i < g_conns && !g_error[0]; i++)
            if (!us[i].ready) udp_resend(&us[i], now, sbuf, 1);
    }
    g_lost = g_late = 0;
    /* phase 2 + 3: every slot in flight; warm up, then measure */
    uint64_t t0 = now_ns(), t_warm_end = t0 + (uint64_t)(g_warmup * 1e9);
    uint64_t t_end = t_warm_end + (uint64_t)(g_duration * 1e9), last_scan = t0, lost0 = 0;
    window_t w = WINDOW_INIT;
    uint32_t *all = malloc(sizeof(uint32_t) * (size_t)g_pipeline);
    for (int s = 0; s < g_pipeline; s++) all[s] = (uint32_t)s;
    for (int i = 0; i < g_conns && !g_error[0]; i++) {
        us[i].gen[0]++;  /* the priming reply is done: a fresh generation for every slot */
        udp_send(&us[i], all, g_pipeline, t0, sbuf);
    }
    while (!g_error[0]) {
        uint64_t now = now_ns();
        if (!g_measuring && now >= t_warm_end) {
            window_open(&w);
            lost0 = g_lost;
            for (int i = 0; i < g_conns; i++) us[i].done_at_start = window_mark(&w, us[i].done);
        }
        if (now >= t_end) break;
        int n = epoll_wait(g_ep, evs, 1024, 20);
        for (int k = 0; k < n && !g_error[0]; k++) udp_read(evs[k].data.ptr, rbuf, sbuf, 1);
        now = now_ns();
        if (now - last_scan >= 50000000ull) {
            last_scan = now;
            for (int i = 0; i < g_conns && !g_error[0]; i++) udp_resend(&us[i], now, sbuf, g_pipeline);
        }
    }
    window_close(&w);
    for (int i = 0; i < g_conns; i++) window_count(&w, us[i].done, us[i].done_at_start, us[i].fd);
    g_lost -= lost0;
    return window_report(&w, ready);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: loadgen --port N [--host 127.0.0.1] [--conns 50] [--size 64] [--pipeline 1]\n"
            "               [--duration 3] [--warmup 1] [--mode raw|framed|ws|get|rpc|udp] [--server-pid PID]\n"
            "               [--connect-timeout 10]\n");
}

static void print_json(double window, uint64_t msgs, double scpu, double ccpu, uint64_t min_c, uint64_t max_c,
                       int stalled, int connected) {
    double rate = window > 0 ? (double)msgs / window : 0.0;
    printf("{\"mode\": \"%s\", \"conns\": %d, \"connected\": %d, \"size\": %d, \"request_bytes\": %zu, "
           "\"reply_bytes\": %zu, \"pipeline\": %d, "
           "\"warmup_s\": %.3f, \"window_s\": %.6f, \"msgs\": %llu, \"msgs_per_s\": %.1f, \"mb_per_s\": %.3f, "
           "\"lat_us\": {\"p50\": %.2f, \"p99\": %.2f, \"p999\": %.2f, \"mean\": %.2f, \"max\": %.2f}, ",
           MODE_NAMES[g_mode], g_conns, connected, g_size, g_msg_out, g_msg_in, g_pipeline, g_warmup, window,
           (unsigned long long)msgs, rate, rate * g_size / 1e6, percentile_us(0.50), percentile_us(0.99),
           percentile_us(0.999), g_hist_n ? g_lat_sum / (double)g_hist_n / 1000.0 : 0.0,
           (double)g_lat_max / 1000.0);
    if (scpu >= 0)
        printf("\"server_cpu_s\": %.3f, \"server_cpu_us_per_msg\": %.4f, ", scpu,
               msgs ? scpu * 1e6 / (double)msgs : 0.0);
    else
        printf("\"server_cpu_s\": null, \"server_cpu_us_per_msg\": null, ");
    printf("\"client_cpu_s\": %.3f, \"min_conn_msgs\": %llu, \"max_conn_msgs\": %llu, \"stalled_conns\": %d, ",
           ccpu, (unsigned long long)min_c, (unsigned long long)max_c, stalled);
    printf("\"lost\": %llu, \"late\": %llu, ", (unsigned long long)g_lost, (unsigned long long)g_late);
    if (g_error[0]) {
        printf("\"error\": \"");
        for (const char *s = g_error; *s; s++) {
            if (*s == '"' || *s == '\\') putchar('\\');
            putchar((unsigned char)*s >= 0x20 ? *s : ' ');
        }
        printf("\"}\n");
    } else {
        printf("\"error\": null}\n");
    }
    fflush(stdout);
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"host", 1, 0, 'h'},     {"port", 1, 0, 'p'},       {"conns", 1, 0, 'c'},
        {"size", 1, 0, 's'},     {"pipeline", 1, 0, 'P'},   {"duration", 1, 0, 'd'},
        {"warmup", 1, 0, 'w'},   {"mode", 1, 0, 'm'},       {"server-pid", 1, 0, 'i'},
        {"connect-timeout", 1, 0, 't'}, {"help", 0, 0, '?'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': g_host = optarg; break;
        case 'p': g_port = atoi(optarg); break;
        case 'c': g_conns = atoi(optarg); break;
        case 's': g_size = atoi(optarg); break;
        case 'P': g_pipeline = atoi(optarg); break;
        case 'd': g_duration = atof(optarg); break;
        case 'w': g_warmup = atof(optarg); break;
        case 'i': g_pid = atoi(optarg); break;
        case 't': g_connect_timeout = atof(optarg); break;
        case 'm':
            if (!strcmp(optarg, "raw")) g_mode = MODE_RAW;
            else if (!strcmp(optarg, "framed")) g_mode = MODE_FRAMED;
            else if (!strcmp(optarg, "ws")) g_mode = MODE_WS;
            else if (!strcmp(optarg, "get")) g_mode = MODE_GET;
            else if (!strcmp(optarg, "rpc")) g_mode = MODE_RPC;
            else if (!strcmp(optarg, "udp")) g_mode = MODE_UDP;
            else { usage(stderr); return 2; }
            break;
        default: usage(o == '?' ? stdout : stderr); return 2;
        }
    }
    if (g_port <= 0 || g_conns <= 0 || g_size <= 0 || g_pipeline <= 0 || g_duration <= 0 || g_warmup < 0) {
        usage(stderr);
        return 2;
    }

    /* message layout */
    if (g_mode == MODE_FRAMED) {
        g_hdr_out = g_hdr_in = 4;
        for (int i = 0; i < 4; i++) g_hdr_out_bytes[i] = (unsigned char)((uint32_t)g_size >> (24 - 8 * i));
        memcpy(g_hdr_in_bytes, g_hdr_out_bytes, 4);
    } else if (g_mode == MODE_WS) {
        g_hdr_out = ws_header(g_hdr_out_bytes, (size_t)g_size, 1);
        g_hdr_in = ws_header(g_hdr_in_bytes, (size_t)g_size, 0);
    }
    if (table_mode()) {
        build_tables();
        g_size = (int)g_msg_in; /* "size" and mb_per_s count reply bytes */
    } else {
        g_msg_out = g_hdr_out + (size_t)g_size;
        g_msg_in = g_hdr_in + (size_t)g_size;
    }
    g_pattern = malloc((size_t)g_size + 256);
    uint32_t x = 2463534242u; /* xorshift: fixed, non-repeating-looking bytes */
    for (int i = 0; i < g_size + 256; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        g_pattern[i] = (unsigned char)x;
    }

    /* enough descriptors for the connections */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)g_conns + 64) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)g_conns + 64 ? rl.rlim_max : (rlim_t)g_conns + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    if (inet_pton(AF_INET, g_host, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad --host %s (IPv4 address expected)\n", g_host);
        return 2;
    }

    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_mode == MODE_UDP) return run_udp(&sa);
    g_c = calloc((size_t)g_conns, sizeof *g_c);
    size_t wcap = (size_t)g_pipeline * g_msg_out + 1024;
    for (int i = 0; i < g_conns; i++) {
        g_c[i].id = i;
        g_c[i].fd = -1;
        g_c[i].wbuf = malloc(wcap);
        g_c[i].ts = calloc((size_t)g_pipeline, sizeof(uint64_t));
    }
    size_t rcap = 256 * 1024;
    unsigned char *rbuf = malloc(rcap);
    struct epoll_event *evs = calloc(1024, sizeof *evs);

    uint64_t t_start = now_ns(), deadline = t_start + (uint64_t)(g_connect_timeout * 1e9);
    int ready = 0;
    for (int i = 0; i < g_conns && !g_error[0]; i++) open_conn(&g_c[i], &sa);

    /* phase 1: connect (and handshake) every connection, and make one round trip on it */
    while (!g_error[0] && ready < g_conns) {
        uint64_t now = now_ns();
        if (now >= deadline) {
            fail("only %d of %d connections connected and answered a first request after %.1f s", ready,
                 g_conns, g_connect_timeout);
            break;
        }
        int n = epoll_wait(g_ep, evs, 1024, (int)((deadline - now) / 1000000 + 1));
        for (int k = 0; k < n && !g_error[0]; k++) {
            conn_t *c = evs[k].data.ptr;
            int r = 0;
            if (c->state == ST_CONNECTING) {
                r = on_connected(c);
            } else if (c->state == ST_HANDSHAKE) {
                if (evs[k].events & EPOLLOUT) r = flush_out(c);
                if (r >= 0 && (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) r = read_handshake(c);
            } else if (c->state == ST_PRIMING) {
                if (evs[k].events & EPOLLOUT) r = flush_out(c);
                if (r >= 0 && (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) r = handle_read(c, rbuf, rcap);
            } else if (c->state == ST_READY && (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                fail("connection %d: server sent data or closed before the load started", c->id);
            }
            if (r > 0) ready++;
        }
    }

    /* phase 2 + 3: warm up, then measure */
    uint64_t t0 = now_ns(), t_warm_end = t0 + (uint64_t)(g_warmup * 1e9);
    uint64_t t_end = t_warm_end + (uint64_t)(g_duration * 1e9);
    window_t w = WINDOW_INIT;
    if (!g_error[0]) {
        for (int i = 0; i < g_conns && !g_error[0]; i++) {
            g_c[i].state = ST_RUNNING;
            send_msgs(&g_c[i], g_pipeline, t0);
        }
    }
    while (!g_error[0]) {
        uint64_t now = now_ns();
        if (!g_measuring && now >= t_warm_end) {
            window_open(&w);
            for (int i = 0; i < g_conns; i++) g_c[i].done_at_start = window_mark(&w, g_c[i].done);
        }
        if (now >= t_end) break;
        uint64_t next = g_measuring ? t_end : t_warm_end;
        int timeout_ms = (int)((next - now) / 1000000) + 1;
        if (timeout_ms > 100) timeout_ms = 100;
        int n = epoll_wait(g_ep, evs, 1024, timeout_ms);
        for (int k = 0; k < n && !g_error[0]; k++) {
            conn_t *c = evs[k].data.ptr;
            if ((evs[k].events & EPOLLOUT) && flush_out(c) < 0) break;
            if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) handle_read(c, rbuf, rcap);
        }
    }
    window_close(&w);
    for (int i = 0; i < g_conns; i++) window_count(&w, g_c[i].done, g_c[i].done_at_start, g_c[i].fd);
    return window_report(&w, ready);
}
