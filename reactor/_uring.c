/* reactor native module: the io_uring backend (declarations in _uring.h, rows in _reactor.h).

   Direct syscalls (io_uring_setup / io_uring_enter / io_uring_register), the SQ and CQ rings
   mmap'd; no liburing.  The ABI structs below are written out from the kernel's UAPI so that
   no io_uring header is needed to build.  What the backend does per fd:
   - a listener: one multishot accept (SOCK_NONBLOCK | SOCK_CLOEXEC); the peer address comes
     from getpeername (multishot accept has no per-accept address buffer).
   - a connection: one multishot receive into the provided-buffer ring (group 0).  Each
     completion is copied into the loop's arena and its buffer handed back to the kernel at
     once, so the kernel never rewrites memory a handler's view can reach: views are cut from
     the arena, under the arena's retirement rule (arena.py), exactly as with epoll.
   - write interest: a one-shot POLL_ADD (POLLOUT) -> PG_R_WRITABLE.
   - the wake-up eventfd: a multishot POLL_ADD; the counter is drained with read().
   Reading paused (interest off) cancels the receive; what completes before the cancel lands is
   held (copied, in order) and handed over when interest returns, so pausing still pushes back
   on the peer through TCP.  user_data = op << 56 | generation << 32 | fd: forgetting an fd
   bumps its generation and cancels its requests, so a late completion for an old fd number
   is dropped (its buffer recycled, an accepted fd closed), never applied to a new connection.
   Sends (pg_uring_flush): one SEND / SENDMSG SQE per connection with MSG_DONTWAIT, which the
   kernel tries once, inline, at submission: after the flush's io_uring_enter every send has
   completed, the flush reports short writes exactly like pg_flush and no buffer is needed
   past it.  Completions of other requests reaped by the flush wait in a list for the next
   poll. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#ifdef __linux__
#include <sys/mman.h>
#include <sys/syscall.h>
#endif

#include "_reactor.h"
#include "_uring.h"

int pg_read_rows(pg_loop *L, int fd, int64_t at, int64_t r, int nr);
int32_t pg_addr_hash(const struct sockaddr_storage *ss);

#ifdef __linux__

/* ---- the kernel ABI (include/uapi/linux/io_uring.h), written out --------------------------- */

struct pgu_sqe {
    uint8_t opcode, flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off;
    uint64_t addr;
    uint32_t len;
    uint32_t op_flags;       /* msg_flags, accept_flags, poll32_events, cancel_flags */
    uint64_t user_data;
    uint16_t buf_group;
    uint16_t personality;
    int32_t file_index;
    uint64_t addr3;
    uint64_t pad2;
};
struct pgu_cqe { uint64_t user_data; int32_t res; uint32_t flags; };
struct pgu_sq_off { uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1; uint64_t user_addr; };
struct pgu_cq_off { uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1; uint64_t user_addr; };
struct pgu_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd, resv[3];
    struct pgu_sq_off sq_off;
    struct pgu_cq_off cq_off;
};
struct pgu_buf { uint64_t addr; uint32_t len; uint16_t bid; uint16_t resv; };
struct pgu_buf_reg { uint64_t ring_addr; uint32_t ring_entries; uint16_t bgid; uint16_t flags; uint64_t resv[3]; };
struct pgu_getevents_arg { uint64_t sigmask; uint32_t sigmask_sz; uint32_t min_wait_usec; uint64_t ts; };
struct pgu_timespec { int64_t tv_sec; long long tv_nsec; };

_Static_assert(sizeof(struct pgu_sqe) == 64, "io_uring_sqe is 64 bytes");
_Static_assert(sizeof(struct pgu_cqe) == 16, "io_uring_cqe is 16 bytes");
_Static_assert(sizeof(struct pgu_params) == 120, "io_uring_params is 120 bytes");

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

#define U_OP_POLL_ADD 6
#define U_OP_SENDMSG 9
#define U_OP_ACCEPT 13
#define U_OP_ASYNC_CANCEL 14
#define U_OP_SEND 26
#define U_OP_RECV 27

#define U_SETUP_CQSIZE (1U << 3)
#define U_SETUP_R_DISABLED (1U << 6)
#define U_SETUP_SINGLE_ISSUER (1U << 12)
#define U_SETUP_DEFER_TASKRUN (1U << 13)
#define U_REGISTER_ENABLE_RINGS 12
#define U_SETUP_SUBMIT_ALL (1U << 7)
#define U_SETUP_COOP_TASKRUN (1U << 8)
#define U_SETUP_TASKRUN_FLAG (1U << 9)
#define U_FEAT_SINGLE_MMAP (1U << 0)
#define U_FEAT_NODROP (1U << 1)
#define U_FEAT_FAST_POLL (1U << 5)
#define U_FEAT_EXT_ARG (1U << 8)
#define U_ENTER_GETEVENTS (1U << 0)
#define U_ENTER_EXT_ARG (1U << 3)
#define U_SQ_CQ_OVERFLOW (1U << 1)
#define U_SQ_TASKRUN (1U << 2)
#define U_SQE_BUFFER_SELECT (1U << 5)
#define U_SQE_CQE_SKIP_SUCCESS (1U << 6)
#define U_CQE_F_BUFFER (1U << 0)
#define U_CQE_F_MORE (1U << 1)
#define U_CQE_F_BUF_MORE (1U << 4)
#define U_PBUF_RING_INC 2
#define U_RECV_MULTISHOT (1U << 1)
#define U_ACCEPT_MULTISHOT (1U << 0)
#define U_POLL_ADD_MULTI (1U << 0)
#define U_REGISTER_PBUF_RING 22
#define U_CANCEL_ALL (1U << 0)
#define U_CANCEL_ANY (1U << 2)
#define U_OFF_SQ_RING 0ULL
#define U_OFF_CQ_RING 0x8000000ULL
#define U_OFF_SQES 0x10000000ULL

/* ---- state ------------------------------------------------------------------------------------ */

enum { UD_RECV = 1, UD_ACCEPT = 2, UD_POLLOUT = 3, UD_WAKE = 4, UD_SEND = 5, UD_CANCEL = 6,
       UD_PREAD = 7,     /* readiness poll: Python reads (PG_F_PYREAD conns, UDP sockets) */
       UD_PERR = 8 };    /* a paused connection's error watch (a reset must still end it) */
#define UD(op, gen, fd) (((uint64_t)(op) << 56) | ((uint64_t)((gen) & 0xffffffu) << 32) | (uint32_t)(fd))
#define UD_OP(u) ((int)((u) >> 56))
#define UD_GEN(u) ((uint32_t)(((u) >> 32) & 0xffffffu))
#define UD_FD(u) ((int)(uint32_t)(u))
#define BGID 0
#define UIOV_MAX 1024          /* iovecs per send (UIO_MAXIOV); the rest is reported unsent */
#define ROW_RESERVE 4
#define HOLD_MAX (256u << 10)  /* held input past this cancels the fd's receive until it drains */
#define BUFS_FIRST 64          /* buffers given to the kernel at first; doubled on each ENOBUFS, so
                                  only as many as the peak of one turn ever have pages behind them */

typedef struct {
    uint32_t gen;
    uint8_t kind, want_r, want_w;
    uint8_t rd;            /* the read-side request (recv / accept / wake poll) is in flight */
    uint8_t rd_cancel;     /* ... and a cancel for it has been queued */
    uint8_t rd_poll;       /* ... and it is a readiness poll (UD_PREAD), not a receive */
    uint8_t watch;         /* the error watch (UD_PERR) is in flight */
    uint8_t wr;            /* the POLLOUT request is in flight */
    uint8_t listed;        /* on the held list */
    uint8_t held_end;      /* held: the stream ended (EOF when held_err is 0) */
    int32_t held_err;
    uint32_t turn;         /* the last poll that handed over input of this fd */
    int32_t row;           /* ... and its PG_R_DATA row there (raw reads), else -1 */
    int64_t turn_bytes;    /* ... and how many bytes it handed over in that poll */
    char *held;
    uint32_t held_len, held_cap;
} ufd;

struct pg_uring {
    int rfd;
    unsigned features;
    int disabled;          /* created disabled (single issuer): pg_uring_enable on the loop's thread */
    /* submission queue */
    unsigned *sq_head, *sq_tail, *sq_flags, *sq_array;
    unsigned sq_entries, sq_mask, sq_local;     /* sq_local: our tail, published before enter */
    struct pgu_sqe *sqes;
    /* completion queue */
    unsigned *cq_head, *cq_tail;
    unsigned cq_mask;
    struct pgu_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_map_len, cq_map_len, sqes_len;
    /* provided buffers */
    struct pgu_buf *br;
    size_t br_len;
    char *bufs;
    size_t bufs_len;
    unsigned nbufs, bufsize, live;   /* live: buffers handed out so far (grown on ENOBUFS) */
    int inc;               /* incremental consumption (6.12+): small receives pack together */
    uint32_t *boff;        /* incremental: bytes of each buffer consumed so far */
    uint16_t br_tail;
    int br_dirty;
    /* per fd */
    ufd *fds;
    int nfds;
    /* completions reaped by a flush, for the next poll */
    struct pgu_cqe *pend;
    int npend, pend_pos, cap_pend;
    /* fds with held input */
    int *held;
    int nheld, cap_held;
    /* flush scratch */
    struct iovec *iov;
    unsigned char (*hdr)[8];
    int64_t cap_iov;
    struct msghdr *msg;
    int64_t *res, *total;
    int64_t cap_groups;
    int64_t stats[4];
    uint32_t turn;         /* polls so far */
    pg_loop *L;            /* the loop attached (its per-fd flags choose receive or readiness) */
};

static int sys_setup(unsigned entries, struct pgu_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags, void *arg, size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
}

static int sys_register(int fd, unsigned op, void *arg, unsigned nr)
{
    return (int)syscall(__NR_io_uring_register, fd, op, arg, nr);
}

static unsigned load_acq(unsigned *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store_rel(unsigned *p, unsigned v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static unsigned sq_pending(pg_uring *U) { return U->sq_local - load_acq(U->sq_head); }

static int submit(pg_uring *U, unsigned min_complete, unsigned flags, void *arg, size_t argsz)
{
    store_rel(U->sq_tail, U->sq_local);
    U->stats[PG_US_ENTERS]++;
    int r = sys_enter(U->rfd, sq_pending(U), min_complete, flags, arg, argsz);
    return r < 0 ? -errno : r;
}

/* The next free SQE, zeroed (the SQ full: submit what is queued first). */
static struct pgu_sqe *get_sqe(pg_uring *U)
{
    for (int tries = 0; U->sq_local - load_acq(U->sq_head) >= U->sq_entries; tries++) {
        if (tries == 4) return NULL;
        int r = submit(U, 0, tries ? U_ENTER_GETEVENTS : 0, NULL, 0);     /* GETEVENTS: flush an overflow */
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) return NULL;
    }
    struct pgu_sqe *s = &U->sqes[U->sq_local & U->sq_mask];
    memset(s, 0, sizeof *s);
    U->sq_local++;
    return s;
}

static void put_buffer(pg_uring *U, unsigned bid)
{
    struct pgu_buf *b = &U->br[(U->br_tail) & (U->nbufs - 1)];
    b->addr = (uint64_t)(uintptr_t)(U->bufs + (size_t)bid * U->bufsize);
    b->len = U->bufsize;
    b->bid = (uint16_t)bid;
    if (U->boff) U->boff[bid] = 0;
    U->br_tail++;
    U->br_dirty = 1;
}

/* A completion's buffer is done with (its bytes copied out): incremental buffers go back once
   the kernel has moved past them (no IORING_CQE_F_BUF_MORE), others at once. */
static void release_buffer(pg_uring *U, const struct pgu_cqe *c)
{
    unsigned bid = c->flags >> 16;
    if (bid >= U->nbufs) return;
    if (U->inc) {
        if (c->res > 0) U->boff[bid] += (uint32_t)c->res;
        if (c->flags & U_CQE_F_BUF_MORE) return;
    }
    put_buffer(U, bid);
}

static void publish_buffers(pg_uring *U)
{
    if (!U->br_dirty) return;
    /* the ring tail overlays the resv field of the first entry */
    __atomic_store_n(&U->br[0].resv, U->br_tail, __ATOMIC_RELEASE);
    U->br_dirty = 0;
}

/* ---- set-up and tear-down ------------------------------------------------------------------- */

void pg_uring_free(pg_uring *U)
{
    if (!U) return;
    if (U->rfd >= 0 && U->sqes && !U->disabled) {
        /* Cancel everything now, with what is queued (cancels of fds just closed): closing the
           ring alone cancels its requests later, from a kernel worker, and until then they keep
           their files - a listener would go on accepting. */
        struct pgu_sqe *s = get_sqe(U);
        if (s) {
            s->opcode = U_OP_ASYNC_CANCEL;
            s->fd = -1;
            s->op_flags = U_CANCEL_ANY | U_CANCEL_ALL;
            s->user_data = UD(UD_CANCEL, 0, 0);
        }
        submit(U, 0, U_ENTER_GETEVENTS, NULL, 0);
        submit(U, 0, U_ENTER_GETEVENTS, NULL, 0);      /* the cancelled requests' task work */
    }
    if (U->rfd >= 0) {
        /* accepted fds nobody will see: close them */
        for (int i = U->pend_pos; i < U->npend; i++)
            if (UD_OP(U->pend[i].user_data) == UD_ACCEPT && U->pend[i].res >= 0) close(U->pend[i].res);
        if (U->cq_head) {
            unsigned head = *U->cq_head, tail = load_acq(U->cq_tail);
            for (; head != tail; head++) {
                struct pgu_cqe *c = &U->cqes[head & U->cq_mask];
                if (UD_OP(c->user_data) == UD_ACCEPT && c->res >= 0) close(c->res);
            }
            store_rel(U->cq_head, head);
        }
        close(U->rfd);
    }
    if (U->sqes) munmap(U->sqes, U->sqes_len);
    if (U->cq_map && U->cq_map != U->sq_map) munmap(U->cq_map, U->cq_map_len);
    if (U->sq_map) munmap(U->sq_map, U->sq_map_len);
    if (U->br) munmap(U->br, U->br_len);
    if (U->bufs) munmap(U->bufs, U->bufs_len);
    if (U->fds) {
        for (int i = 0; i < U->nfds; i++) free(U->fds[i].held);
        free(U->fds);
    }
    free(U->boff); free(U->pend); free(U->held); free(U->iov); free(U->hdr); free(U->msg); free(U->res); free(U->total);
    free(U);
}

static void *map_ring(int fd, size_t len, uint64_t off)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, (off_t)off);
    return p == MAP_FAILED ? NULL : p;
}

pg_uring *pg_uring_new(int entries, int nbufs, int bufsize, int nfds, int *err)
{
    *err = 0;
    pg_uring *U = calloc(1, sizeof *U);
    if (!U) { *err = ENOMEM; return NULL; }
    U->rfd = -1;
    struct pgu_params p;
    /* Best first: completions' task work deferred to our own io_uring_enter (6.1+: no wake-up
       per received packet), then cooperative task work (5.19+), then the plain ring. */
    unsigned tries[4] = {U_SETUP_CQSIZE | U_SETUP_SUBMIT_ALL | U_SETUP_SINGLE_ISSUER | U_SETUP_DEFER_TASKRUN
                             | U_SETUP_R_DISABLED,
                         U_SETUP_CQSIZE | U_SETUP_SUBMIT_ALL | U_SETUP_COOP_TASKRUN | U_SETUP_TASKRUN_FLAG,
                         U_SETUP_CQSIZE | U_SETUP_SUBMIT_ALL, U_SETUP_CQSIZE};
    for (int i = 0; i < 4; i++) {
        memset(&p, 0, sizeof p);
        p.flags = tries[i];
        p.cq_entries = (unsigned)entries * 4;
        U->rfd = sys_setup((unsigned)entries, &p);
        if (U->rfd >= 0 || errno != EINVAL) break;
    }
    if (U->rfd < 0) { *err = errno; goto fail; }
    U->features = p.features;
    U->disabled = (p.flags & U_SETUP_R_DISABLED) != 0;
    if (!(p.features & U_FEAT_NODROP) || !(p.features & U_FEAT_EXT_ARG) || !(p.features & U_FEAT_FAST_POLL)) {
        *err = ENOSYS;          /* a kernel older than 5.11: not worth supporting */
        goto fail;
    }
    U->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    U->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct pgu_cqe);
    if (p.features & U_FEAT_SINGLE_MMAP) {
        if (U->cq_map_len > U->sq_map_len) U->sq_map_len = U->cq_map_len;
        U->cq_map_len = U->sq_map_len;
    }
    U->sq_map = map_ring(U->rfd, U->sq_map_len, U_OFF_SQ_RING);
    if (!U->sq_map) { *err = errno; goto fail; }
    U->cq_map = (p.features & U_FEAT_SINGLE_MMAP) ? U->sq_map : map_ring(U->rfd, U->cq_map_len, U_OFF_CQ_RING);
    if (!U->cq_map) { *err = errno; goto fail; }
    U->sqes_len = p.sq_entries * sizeof(struct pgu_sqe);
    U->sqes = map_ring(U->rfd, U->sqes_len, U_OFF_SQES);
    if (!U->sqes) { *err = errno; goto fail; }
    char *sq = U->sq_map, *cq = U->cq_map;
    U->sq_head = (unsigned *)(sq + p.sq_off.head);
    U->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    U->sq_flags = (unsigned *)(sq + p.sq_off.flags);
    U->sq_array = (unsigned *)(sq + p.sq_off.array);
    U->sq_entries = p.sq_entries;
    U->sq_mask = *(unsigned *)(sq + p.sq_off.ring_mask);
    U->sq_local = *U->sq_tail;
    for (unsigned i = 0; i < p.sq_entries; i++) U->sq_array[i] = i;     /* SQE i sits in slot i */
    U->cq_head = (unsigned *)(cq + p.cq_off.head);
    U->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    U->cq_mask = *(unsigned *)(cq + p.cq_off.ring_mask);
    U->cqes = (struct pgu_cqe *)(cq + p.cq_off.cqes);

    /* the provided-buffer ring: nbufs (a power of two) buffers of bufsize bytes */
    U->nbufs = (unsigned)nbufs;
    U->bufsize = (unsigned)bufsize;
    U->br_len = (size_t)nbufs * sizeof(struct pgu_buf);
    U->br = mmap(NULL, U->br_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (U->br == MAP_FAILED) { U->br = NULL; *err = errno; goto fail; }
    U->bufs_len = (size_t)nbufs * (size_t)bufsize;
    U->bufs = mmap(NULL, U->bufs_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (U->bufs == MAP_FAILED) { U->bufs = NULL; *err = errno; goto fail; }
    struct pgu_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)U->br;
    reg.ring_entries = (uint32_t)nbufs;
    reg.bgid = BGID;
    /* Incremental consumption where the kernel has it: receives are packed back to back into
       the head buffer (as epoll reads are into the arena), not one buffer (and page) each. */
    U->boff = calloc((size_t)nbufs, sizeof(uint32_t));
    if (!U->boff) { *err = ENOMEM; goto fail; }
    reg.flags = U_PBUF_RING_INC;
    U->inc = sys_register(U->rfd, U_REGISTER_PBUF_RING, &reg, 1) == 0;
    if (!U->inc) {
        reg.flags = 0;
        if (sys_register(U->rfd, U_REGISTER_PBUF_RING, &reg, 1) < 0) { *err = errno; goto fail; }
    }
    U->live = U->nbufs < BUFS_FIRST ? U->nbufs : BUFS_FIRST;
    for (unsigned i = 0; i < U->live; i++) put_buffer(U, i);
    publish_buffers(U);

    U->nfds = nfds;
    U->fds = calloc((size_t)nfds, sizeof(ufd));
    if (!U->fds) { *err = ENOMEM; goto fail; }
    return U;
fail:
    if (!*err) *err = EINVAL;
    pg_uring_free(U);
    return NULL;
}

void pg_uring_attach(pg_uring *U, pg_loop *L) { L->backend = U; U->L = L; }

/* Called on the thread that will submit (a single-issuer ring binds to it): from now on only
   that thread may call poll, flush and ctl. */
int pg_uring_enable(pg_uring *U)
{
    if (!U->disabled) return 0;
    if (sys_register(U->rfd, U_REGISTER_ENABLE_RINGS, NULL, 0) < 0) return -errno;
    U->disabled = 0;
    return 0;
}

int pg_uring_probe(void)
{
    int err;
    pg_uring *U = pg_uring_new(8, 8, 4096, 16, &err);
    if (!U) return -err;
    if ((err = pg_uring_enable(U)) < 0) { pg_uring_free(U); return err; }
    /* multishot receive needs 6.0: arm one on a socketpair and see that it is accepted */
    int sv[2];
    int res = 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0) {
        struct pgu_sqe *s = get_sqe(U);
        s->opcode = U_OP_RECV; s->fd = sv[0]; s->flags = U_SQE_BUFFER_SELECT; s->buf_group = BGID;
        s->ioprio = U_RECV_MULTISHOT; s->user_data = 1;
        if (write(sv[1], "x", 1) == 1 && submit(U, 1, U_ENTER_GETEVENTS, NULL, 0) >= 0) {
            unsigned head = *U->cq_head;
            if (head != load_acq(U->cq_tail)) {
                struct pgu_cqe *c = &U->cqes[head & U->cq_mask];
                if (c->res < 0) res = c->res;
                else if (!(c->flags & U_CQE_F_MORE)) res = -ENOSYS;
                store_rel(U->cq_head, head + 1);
            } else {
                res = -ENOSYS;
            }
        }
        close(sv[0]); close(sv[1]);
    }
    pg_uring_free(U);
    return res == -EINVAL ? -ENOSYS : res;
}

int64_t pg_uring_stat(pg_uring *U, int what)
{
    if (what == PG_US_INCREMENTAL) return U->inc;
    return what >= 0 && what < 4 ? U->stats[what] : -1;
}

/* ---- registration ------------------------------------------------------------------------ */

static void arm_read(pg_uring *U, int fd)
{
    ufd *f = &U->fds[fd];
    struct pgu_sqe *s = get_sqe(U);
    if (!s) return;
    s->fd = fd;
    if (f->kind == PG_K_LISTEN) {
        s->opcode = U_OP_ACCEPT;
        s->ioprio = U_ACCEPT_MULTISHOT;
        s->op_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
        s->user_data = UD(UD_ACCEPT, f->gen, fd);
    } else if (f->kind == PG_K_WAKE) {
        s->opcode = U_OP_POLL_ADD;
        s->len = U_POLL_ADD_MULTI;
        s->op_flags = POLLIN;
        s->user_data = UD(UD_WAKE, f->gen, fd);
    } else if (f->kind == PG_K_UDP
               || (U->L && fd < U->L->nflags && (U->L->fdflags[fd] & PG_F_PYREAD)
                   && !f->held_len && !f->held_end)) {
        /* Python reads this fd itself (datagrams, or a ring behind leftovers / a dialed
           connection): report readiness.  One-shot, re-armed on completion: level-triggered,
           as epoll is, so a socket left unread is reported again.  Never while bytes received
           earlier are held here: Python's read would overtake them. */
        s->opcode = U_OP_POLL_ADD;
        s->op_flags = POLLIN;
        s->user_data = UD(UD_PREAD, f->gen, fd);
        f->rd_poll = 1;
    } else {
        s->opcode = U_OP_RECV;
        s->ioprio = U_RECV_MULTISHOT;
        s->flags = U_SQE_BUFFER_SELECT;
        s->buf_group = BGID;
        s->user_data = UD(UD_RECV, f->gen, fd);
        f->rd_poll = 0;
    }
    f->rd = 1;
    f->rd_cancel = 0;
}

/* Paused connections: no receive is armed, but a reset must still end the connection (epoll
   reports EPOLLERR whatever the interest).  A poll with no events completes on POLLERR/POLLHUP. */
static void arm_watch(pg_uring *U, int fd)
{
    ufd *f = &U->fds[fd];
    struct pgu_sqe *s = get_sqe(U);
    if (!s) return;
    s->opcode = U_OP_POLL_ADD;
    s->fd = fd;
    s->op_flags = 0;
    s->user_data = UD(UD_PERR, f->gen, fd);
    f->watch = 1;
}

static uint64_t read_ud(ufd *f, int fd)
{
    int op = f->kind == PG_K_LISTEN ? UD_ACCEPT : f->kind == PG_K_WAKE ? UD_WAKE
             : f->rd_poll ? UD_PREAD : UD_RECV;
    return UD(op, f->gen, fd);
}

static void cancel(pg_uring *U, uint64_t ud)
{
    struct pgu_sqe *s = get_sqe(U);
    if (!s) return;
    s->opcode = U_OP_ASYNC_CANCEL;
    s->fd = -1;
    s->addr = ud;
    s->flags = U_SQE_CQE_SKIP_SUCCESS;
    s->user_data = UD(UD_CANCEL, 0, 0);
}

static void arm_pollout(pg_uring *U, int fd)
{
    ufd *f = &U->fds[fd];
    struct pgu_sqe *s = get_sqe(U);
    if (!s) return;
    s->opcode = U_OP_POLL_ADD;
    s->fd = fd;
    s->op_flags = POLLOUT;
    s->user_data = UD(UD_POLLOUT, f->gen, fd);
    f->wr = 1;
}

/* op: 1 add, 2 modify (as pg_ctl).  Takes effect at the next submission. */
int pg_uring_ctl(pg_uring *U, int op, int fd, int kind, int readable, int writable)
{
    if (fd < 0 || fd >= U->nfds) return -EBADF;
    ufd *f = &U->fds[fd];
    if (op == 1) {
        if (f->rd || f->wr) pg_uring_forget(U, fd);     /* closed without forget: drop the old */
        f->kind = (uint8_t)kind;
        f->rd = f->rd_cancel = f->rd_poll = f->watch = f->wr = 0;
        f->held_len = 0; f->held_end = 0; f->held_err = 0;
    } else if (op != 2) {
        return -EINVAL;
    }
    f->want_r = (uint8_t)(readable != 0);
    f->want_w = (uint8_t)(writable != 0);
    if (f->want_r && !f->rd) arm_read(U, fd);
    else if (!f->want_r && f->rd && !f->rd_cancel) { cancel(U, read_ud(f, fd)); f->rd_cancel = 1; }
    if (f->kind == PG_K_CONN) {       /* (POLLOUT, when armed, reports errors itself) */
        int idle = !f->want_r && !f->want_w;
        if (idle && !f->watch) arm_watch(U, fd);
        else if (!idle && f->watch) { cancel(U, UD(UD_PERR, f->gen, fd)); f->watch = 0; }
    }
    if (f->want_w && !f->wr) arm_pollout(U, fd);
    return 0;
}

void pg_uring_forget(pg_uring *U, int fd)
{
    if (fd < 0 || fd >= U->nfds) return;
    ufd *f = &U->fds[fd];
    if (f->rd) cancel(U, read_ud(f, fd));
    if (f->wr) cancel(U, UD(UD_POLLOUT, f->gen, fd));
    if (f->watch) cancel(U, UD(UD_PERR, f->gen, fd));
    f->gen++;
    f->rd = f->rd_cancel = f->rd_poll = f->watch = f->wr = f->want_r = f->want_w = 0;
    f->held_len = 0; f->held_end = 0; f->held_err = 0;
}

int pg_uring_close_fd(pg_uring *U, int fd)
{
    pg_uring_forget(U, fd);
    return close(fd) < 0 ? -errno : 0;
}

/* ---- completions -> rows ------------------------------------------------------------------ */

typedef struct {
    pg_loop *L;
    pg_uring *U;
    int64_t used;
    int nr;
} uturn;

#define ROW(F, A, B, C) do { int32_t *r_ = t->L->rows + 4 * t->nr; r_[0] = (F); r_[1] = (int32_t)(A); \
    r_[2] = (int32_t)(B); r_[3] = (C); t->nr++; } while (0)

static int rows_left(uturn *t) { return t->L->maxrows - ROW_RESERVE - t->nr; }

/* Rows for n bytes of fd's stream (copied into the arena).  Returns 0, or 1 when this turn has
   no room for them (the caller keeps them for the next poll). */
static int deliver(uturn *t, int fd, const char *src, int64_t n)
{
    pg_loop *L = t->L;
    int flags = fd < L->nflags ? L->fdflags[fd] : 0;
    if (flags & PG_F_DISCARD) return 0;
    if (rows_left(t) < 2 || L->arena_size - t->used < n) return 1;
    int64_t at = t->used;
    memcpy(L->arena + at, src, (size_t)n);
    t->used += n;
    if (flags & PG_F_PYREAD) {
        /* the connection's ring holds leftovers: these bytes go behind them */
        ROW(fd, at, n, L->codec.type ? PG_R_PARTIAL : PG_R_DATA);
        return 0;
    }
    t->nr = pg_read_rows(L, fd, at, n, t->nr);
    if (t->nr && L->rows[4 * (t->nr - 1) + 3] == PG_R_PARTIAL && fd < L->nflags)
        L->fdflags[fd] |= PG_F_PYREAD;    /* a later chunk this turn must follow the tail */
    return 0;
}

/* A second completion of fd in one poll.  Raw reads: it joins the fd's row - in place when that
   row ends the arena, else the row moves to the end first - so a connection still gets one
   read of at most read_max per turn, as with epoll.  Split (codec) reads: the chunk's frames
   follow (behind a PG_R_PARTIAL tail, if any, as PG_R_PARTIAL).  1 if handed over. */
static int join_read(uturn *t, ufd *f, int fd, const char *src, int64_t n)
{
    pg_loop *L = t->L;
    if (fd >= L->nflags || (L->fdflags[fd] & PG_F_DISCARD)) return 0;
    if (L->codec.type) {      /* frames follow, up to read_max a poll (the rest is held) */
        if (f->turn_bytes + n > L->read_max || deliver(t, fd, src, n)) return 0;
        f->turn_bytes += n;
        return 1;
    }
    if (f->row < 0 || f->row >= t->nr) return 0;
    int32_t *row = L->rows + 4 * f->row;
    int64_t at = row[1], len = row[2];
    if (row[0] != fd || row[3] != PG_R_DATA || len + n > L->read_max) return 0;
    if (at + len != t->used) {
        if (L->arena_size - t->used < len + n) return 0;
        memmove(L->arena + t->used, L->arena + at, (size_t)len);
        at = t->used;
        t->used += len;
        row[1] = (int32_t)at;
    } else if (L->arena_size - t->used < n) {
        return 0;
    }
    memcpy(L->arena + t->used, src, (size_t)n);
    t->used += n;
    row[2] = (int32_t)(len + n);
    return 1;
}

static void end_row(uturn *t, int fd, int err)
{
    if (err) ROW(fd, err, 0, PG_R_ERROR);
    else ROW(fd, 0, 0, PG_R_EOF);
}

/* A connection hands over one chunk of at most read_max bytes per poll, as one epoll read
   would: messages (and so replies) per turn and backpressure stay as they are with epoll.  A
   second completion in the same poll is held and goes, joined with what follows, next turn. */
static int delivered(uturn *t, ufd *f) { return f->turn == t->U->turn; }

/* Just handed over: remember the turn, and the row when it is one raw read. */
static void mark_delivered(uturn *t, ufd *f, int fd, int64_t n)
{
    f->turn = t->U->turn;
    f->turn_bytes = n;
    f->row = -1;
    if (t->nr && !t->L->codec.type) {
        int32_t *last = t->L->rows + 4 * (t->nr - 1);
        if (last[0] == fd && last[3] == PG_R_DATA) f->row = t->nr - 1;
    }
}

static void hold(pg_uring *U, int fd, const char *src, int n, int end, int err)
{
    ufd *f = &U->fds[fd];
    if (n > 0) {
        if (f->held_len + (uint32_t)n > f->held_cap) {
            uint32_t cap = f->held_cap ? f->held_cap : 4096;
            while (cap < f->held_len + (uint32_t)n) cap *= 2;
            char *p = realloc(f->held, cap);
            if (!p) { f->held_end = 1; f->held_err = ENOMEM; goto listed; }
            f->held = p; f->held_cap = cap;
        }
        memcpy(f->held + f->held_len, src, (size_t)n);
        f->held_len += (uint32_t)n;
        U->stats[PG_US_HELD]++;
        if (f->held_len >= HOLD_MAX && f->rd && !f->rd_cancel) {
            /* stop receiving until this is handed over: the socket buffer pushes back again */
            cancel(U, read_ud(f, fd));
            f->rd_cancel = 1;
        }
    }
    if (end) { f->held_end = 1; f->held_err = err; }
listed:
    if (!f->listed) {
        if (U->nheld == U->cap_held) {
            int cap = U->cap_held ? 2 * U->cap_held : 64;
            int *p = realloc(U->held, (size_t)cap * sizeof(int));
            if (!p) return;
            U->held = p; U->cap_held = cap;
        }
        U->held[U->nheld++] = fd;
        f->listed = 1;
    }
}

/* Held input of fds whose reading is back on: rows now, in order. */
static void deliver_held(uturn *t)
{
    pg_uring *U = t->U;
    int k = 0;
    for (int i = 0; i < U->nheld; i++) {
        int fd = U->held[i];
        ufd *f = &U->fds[fd];
        if (!f->held_len && !f->held_end) { f->listed = 0; continue; }
        if (!f->want_r || rows_left(t) < 2) { U->held[k++] = fd; continue; }
        if (f->held_len) {
            int64_t n = f->held_len, room = t->L->arena_size - t->used;
            if (n > room) n = room;
            if (n > t->L->read_max) n = t->L->read_max;
            if (delivered(t, f)) n = 0;
            int flags = fd < t->L->nflags ? t->L->fdflags[fd] : 0;
            if (flags & PG_F_DISCARD) n = f->held_len;
            if (n > 0) {
                deliver(t, fd, f->held, n);
                mark_delivered(t, f, fd, n);
                memmove(f->held, f->held + n, f->held_len - (size_t)n);
                f->held_len -= (uint32_t)n;
            }
            if (f->held_len) {
                if (f->want_r && !f->rd && !f->held_end && f->held_len < HOLD_MAX) arm_read(U, fd);
                U->held[k++] = fd;
                continue;
            }
        }
        if (f->held_end) { end_row(t, fd, f->held_err); f->held_end = 0; f->held_err = 0; }
        else if (f->want_r && !f->rd) arm_read(U, fd);
        f->listed = 0;
    }
    U->nheld = k;
}

/* One completion.  Returns 1 when it must wait for the next poll (no room this turn). */
static int handle_cqe(uturn *t, const struct pgu_cqe *c)
{
    pg_uring *U = t->U;
    pg_loop *L = t->L;
    uint64_t ud = c->user_data;
    int op = UD_OP(ud), fd = UD_FD(ud), res = c->res;
    int more = (c->flags & U_CQE_F_MORE) != 0;
    if (op == UD_CANCEL || op == UD_SEND || op == 0) return 0;
    if (fd < 0 || fd >= U->nfds) return 0;
    ufd *f = &U->fds[fd];
    int stale = UD_GEN(ud) != (f->gen & 0xffffffu);
    if (op == UD_RECV) {
        int has_buf = (c->flags & U_CQE_F_BUFFER) != 0;
        unsigned bid = c->flags >> 16;
        if (stale) {
            if (has_buf) release_buffer(U, c);
            U->stats[PG_US_STALE]++;
            return 0;
        }
        const char *src = has_buf && bid < U->nbufs ? U->bufs + (size_t)bid * U->bufsize + U->boff[bid] : NULL;
        if ((has_buf && !src) || (src && res > 0 && (uint64_t)U->boff[bid] + (uint64_t)res > U->bufsize)) {
            /* never read outside a buffer: an accounting the kernel does not match ends the fd */
            src = NULL;
            res = -EIO;
        }
        if (res > 0 && src) {
            if (!f->want_r || f->held_len || f->held_end) hold(U, fd, src, res, 0, 0);
            else if (delivered(t, f)) { if (!join_read(t, f, fd, src, res)) hold(U, fd, src, res, 0, 0); }
            else if (deliver(t, fd, src, res)) return 1;
            else mark_delivered(t, f, fd, res);
        } else if (res == 0) {
            if (!f->want_r || f->held_len || f->held_end) hold(U, fd, NULL, 0, 1, 0);
            else { if (rows_left(t) < 1) return 1; end_row(t, fd, 0); }
            f->rd = 0;
            if (has_buf) release_buffer(U, c);
            return 0;
        } else if (res < 0 && res != -ENOBUFS && res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
            if (!f->want_r || f->held_len || f->held_end) hold(U, fd, NULL, 0, 1, -res);
            else { if (rows_left(t) < 1) return 1; end_row(t, fd, -res); }
            if (more) cancel(U, read_ud(f, fd));     /* ours (EIO): the receive is still armed */
            f->rd = 0;
            if (has_buf) release_buffer(U, c);
            return 0;
        }
        if (has_buf) release_buffer(U, c);
        if (res == -ENOBUFS && U->live < U->nbufs) {
            unsigned to = U->live * 2 < U->nbufs ? U->live * 2 : U->nbufs;
            for (unsigned i = U->live; i < to; i++) put_buffer(U, i);
            U->live = to;
        }
        if (!more) {
            f->rd = 0;
            if (f->want_r && !f->held_end && f->held_len < HOLD_MAX) { arm_read(U, fd); U->stats[PG_US_REARMS]++; }
        }
        return 0;
    }
    if (op == UD_ACCEPT) {
        if (res >= 0) {
            if (stale) { close(res); U->stats[PG_US_STALE]++; return 0; }
            if (rows_left(t) < 1) return 1;
            int flags = fd < L->nflags ? L->fdflags[fd] : 0;
            if (flags & PG_F_NODELAY) {
                int one = 1;
                setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            }
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            memset(&ss, 0, sizeof ss);
            if (getpeername(res, (struct sockaddr *)&ss, &sl) < 0) sl = 0;
            if (L->addrs && res < L->nflags) {
                size_t n = sl < (socklen_t)L->addr_size ? (size_t)sl : (size_t)L->addr_size;
                memset(L->addrs + (size_t)res * L->addr_size, 0, (size_t)L->addr_size);
                memcpy(L->addrs + (size_t)res * L->addr_size, &ss, n);
            }
            ROW(fd, res, pg_addr_hash(&ss), PG_R_ACCEPT);
        } else if (!stale && res != -ECANCELED && res != -EINTR && res != -EAGAIN && res != -ECONNABORTED) {
            if (rows_left(t) < 1) return 1;
            ROW(fd, -res, 0, PG_R_ACCEPT_ERROR);
        }
        if (!more && !stale) {
            f->rd = 0;
            if (f->want_r) { arm_read(U, fd); U->stats[PG_US_REARMS]++; }
        }
        return 0;
    }
    if (stale) { U->stats[PG_US_STALE]++; return 0; }
    if (op == UD_WAKE) {
        if (res > 0) {
            if (rows_left(t) < 1) return 1;
            uint64_t drain;
            while (read(fd, &drain, sizeof drain) > 0) {}
            ROW(fd, 0, 0, PG_R_WAKE);
        }
        if (!more) { f->rd = 0; if (f->want_r) arm_read(U, fd); }
        return 0;
    }
    if (op == UD_POLLOUT) {
        f->wr = 0;
        if (!f->want_w) return 0;
        if (res == -ECANCELED || res == -EINTR) { arm_pollout(U, fd); return 0; }
        if (rows_left(t) < 1) { f->wr = 1; return 1; }
        if (f->kind == PG_K_UDP) ROW(fd, 2, 0, PG_R_UDP);
        else ROW(fd, 0, 0, PG_R_WRITABLE);     /* an error too: the write that follows reports it */
        return 0;
    }
    if (op == UD_PREAD) {
        f->rd = 0;
        f->rd_poll = 0;
        if (!f->want_r) return 0;                 /* cancelled: reading paused */
        if (res == -ECANCELED || res == -EINTR) { arm_read(U, fd); return 0; }
        if (rows_left(t) < 1) { f->rd = 1; f->rd_poll = 1; return 1; }
        if (f->kind == PG_K_UDP) ROW(fd, 1, 0, PG_R_UDP);
        else ROW(fd, 0, 0, PG_R_READABLE);        /* an error too: the read reports it */
        arm_read(U, fd);          /* submitted after Python has read: still readable -> again */
        return 0;
    }
    if (op == UD_PERR) {
        f->watch = 0;
        if (f->want_r || f->want_w || res == -ECANCELED) return 0;
        int err = 0;
        socklen_t el = sizeof err;
        if (res > 0 && (res & POLLERR) && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err) {
            if (rows_left(t) < 1) { f->watch = 1; return 1; }
            ROW(fd, err, 0, PG_R_ERROR);          /* a reset while paused */
        }
        return 0;                                 /* a hang-up is seen when reading resumes */
    }
    return 0;
}

static int push_pend(pg_uring *U, const struct pgu_cqe *c)
{
    if (U->npend == U->cap_pend) {
        if (U->pend_pos > 0) {
            memmove(U->pend, U->pend + U->pend_pos, (size_t)(U->npend - U->pend_pos) * sizeof *c);
            U->npend -= U->pend_pos;
            U->pend_pos = 0;
        }
        if (U->npend == U->cap_pend) {
            int cap = U->cap_pend ? 2 * U->cap_pend : 1024;
            struct pgu_cqe *p = realloc(U->pend, (size_t)cap * sizeof *c);
            if (!p) return -ENOMEM;
            U->pend = p; U->cap_pend = cap;
        }
    }
    U->pend[U->npend++] = *c;
    return 0;
}

int pg_uring_poll(pg_loop *L, int timeout_ms)
{
    pg_uring *U = L->backend;
    uturn t = {L, U, 0, 0};
    U->turn++;
    if (U->nheld) deliver_held(&t);
    int ready = t.nr > 0 || U->pend_pos < U->npend || *U->cq_head != load_acq(U->cq_tail);
    int r = 0;
    if (!ready) {
        if (timeout_ms == 0) {
            r = submit(U, 0, U_ENTER_GETEVENTS, NULL, 0);
        } else if (timeout_ms < 0) {
            r = submit(U, 1, U_ENTER_GETEVENTS, NULL, 0);
        } else {
            struct pgu_timespec ts = {timeout_ms / 1000, (long long)(timeout_ms % 1000) * 1000000LL};
            struct pgu_getevents_arg arg;
            memset(&arg, 0, sizeof arg);
            arg.ts = (uint64_t)(uintptr_t)&ts;
            r = submit(U, 1, U_ENTER_GETEVENTS | U_ENTER_EXT_ARG, &arg, sizeof arg);
        }
    } else if (sq_pending(U) || (load_acq(U->sq_flags) & (U_SQ_CQ_OVERFLOW | U_SQ_TASKRUN))) {
        r = submit(U, 0, U_ENTER_GETEVENTS, NULL, 0);
    }
    if (r < 0 && r != -EINTR && r != -ETIME && r != -EAGAIN && r != -EBUSY) return r;
    int stop = 0;
    while (U->pend_pos < U->npend && !stop) {
        if (handle_cqe(&t, &U->pend[U->pend_pos])) stop = 1;
        else U->pend_pos++;
    }
    if (U->pend_pos == U->npend) U->pend_pos = U->npend = 0;
    if (!stop) {
        unsigned head = *U->cq_head, tail = load_acq(U->cq_tail);
        for (; head != tail; head++)
            if (handle_cqe(&t, &U->cqes[head & U->cq_mask])) break;
        store_rel(U->cq_head, head);
    }
    publish_buffers(U);
    L->nread += t.used;
    L->used = t.used;
    return t.nr;
}

/* ---- output: one send SQE per connection, all submitted by one io_uring_enter ---------------- */

static void put_uint(unsigned char *dst, uint64_t v, int width, int little)
{
    for (int i = 0; i < width; i++) {
        int sh = little ? 8 * i : 8 * (width - 1 - i);
        dst[i] = (unsigned char)(v >> sh);
    }
}

static int grow(pg_uring *U, int64_t niov, int64_t ngroups)
{
    if (niov > U->cap_iov) {
        int64_t cap = niov < 1024 ? 1024 : niov;
        struct iovec *iov = realloc(U->iov, (size_t)cap * sizeof *iov);
        if (!iov) return -ENOMEM;
        U->iov = iov;
        unsigned char (*hdr)[8] = realloc(U->hdr, (size_t)cap * 8);
        if (!hdr) return -ENOMEM;
        U->hdr = hdr;
        U->cap_iov = cap;
    }
    if (ngroups > U->cap_groups) {
        int64_t cap = ngroups < 256 ? 256 : ngroups;
        struct msghdr *m = realloc(U->msg, (size_t)cap * sizeof *m);
        if (!m) return -ENOMEM;
        U->msg = m;
        int64_t *res = realloc(U->res, (size_t)cap * sizeof *res);
        if (!res) return -ENOMEM;
        U->res = res;
        int64_t *tot = realloc(U->total, (size_t)cap * sizeof *tot);
        if (!tot) return -ENOMEM;
        U->total = tot;
        U->cap_groups = cap;
    }
    return 0;
}

/* The same spec and short-write report as pg_flush (see _reactor.c). */
int64_t pg_uring_flush(pg_loop *L, const int64_t *spec, int64_t nspec)
{
    pg_uring *U = L->backend;
    const char *arena = L->arena, *blob = L->blob, *suffix = L->suffix;
    char **ptrs = L->ptrs;
    int hdr_width = L->hdr_width, hdr_little = L->hdr_little, suffix_len = L->suffix_len;
    L->nshort = 0;
    if (grow(U, nspec + 1, nspec / 2 + 1) < 0) return -ENOMEM;
    int64_t pos = 0, k = 0;
    int g = 0, nsends = 0;
    while (pos + 2 <= nspec) {
        int fd = (int)spec[pos];
        int64_t np = spec[pos + 1];
        pos += 2;
        int64_t k0 = k, total = 0;
        int full = 0;
        for (int64_t j = 0; j < np; j++, pos += 3) {
            int kind = (int)spec[pos];
            int64_t a = spec[pos + 1], b = spec[pos + 2];
            int64_t add = kind == PG_O_FRAME ? b + hdr_width + suffix_len : b;
            total += add;
            if (full || k - k0 + 3 > UIOV_MAX || k + 3 > U->cap_iov) { full = 1; continue; }  /* reported unsent */
            switch (kind) {
            case PG_O_ARENA: U->iov[k].iov_base = (void *)(arena + a); U->iov[k++].iov_len = (size_t)b; break;
            case PG_O_BLOB: U->iov[k].iov_base = (void *)(blob + a); U->iov[k++].iov_len = (size_t)b; break;
            case PG_O_PTR: U->iov[k].iov_base = ptrs[a]; U->iov[k++].iov_len = (size_t)b; break;
            case PG_O_FRAME:
                if (hdr_width) {
                    put_uint(U->hdr[k], (uint64_t)b, hdr_width, hdr_little);
                    U->iov[k].iov_base = U->hdr[k]; U->iov[k++].iov_len = (size_t)hdr_width;
                }
                U->iov[k].iov_base = (void *)(arena + a); U->iov[k++].iov_len = (size_t)b;
                if (suffix_len) { U->iov[k].iov_base = (void *)suffix; U->iov[k++].iov_len = (size_t)suffix_len; }
                break;
            default: break;
            }
        }
        U->total[g] = total;
        U->res[g] = 0;
        if (total > 0 && k > k0) {
            struct pgu_sqe *s = get_sqe(U);
            if (!s) { U->res[g] = -EIO; g++; continue; }
            s->fd = fd;
            s->op_flags = MSG_NOSIGNAL | MSG_DONTWAIT;     /* tried once, inline: see the top */
            s->user_data = UD(UD_SEND, 0, g);
            if (k - k0 == 1) {
                s->opcode = U_OP_SEND;
                s->addr = (uint64_t)(uintptr_t)U->iov[k0].iov_base;
                s->len = (uint32_t)U->iov[k0].iov_len;
            } else {
                struct msghdr *m = &U->msg[g];
                memset(m, 0, sizeof *m);
                m->msg_iov = U->iov + k0;
                m->msg_iovlen = (size_t)(k - k0);
                s->opcode = U_OP_SENDMSG;
                s->addr = (uint64_t)(uintptr_t)m;
                s->len = 1;
            }
            U->res[g] = INT64_MIN;      /* in flight */
            nsends++;
        }
        g++;
    }
    int done = 0, first = 1;
    while (done < nsends) {
        int r = submit(U, first ? 0 : (unsigned)(nsends - done), U_ENTER_GETEVENTS, NULL, 0);
        first = 0;
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
            /* cannot submit: nothing was sent */
            for (int i = 0; i < g; i++) if (U->res[i] == INT64_MIN) U->res[i] = r;
            break;
        }
        unsigned head = *U->cq_head, tail = load_acq(U->cq_tail);
        for (; head != tail; head++) {
            struct pgu_cqe *c = &U->cqes[head & U->cq_mask];
            if (UD_OP(c->user_data) == UD_SEND) {
                int gi = UD_FD(c->user_data);
                if (gi >= 0 && gi < g && U->res[gi] == INT64_MIN) { U->res[gi] = c->res; done++; }
            } else if (push_pend(U, c) < 0) {
                break;      /* out of memory: leave the rest in the CQ */
            }
        }
        store_rel(U->cq_head, head);
    }
    int64_t sent = 0;
    for (int i = 0; i < g; i++) {
        int64_t res = U->res[i], total = U->total[i];
        int64_t written = res == -EAGAIN || res == -EWOULDBLOCK || res == INT64_MIN ? 0 : res;
        if (written > 0) sent += written;
        if (written != total) {
            int64_t *row = L->shortw + 3 * L->nshort++;
            row[0] = i; row[1] = written; row[2] = total;
        }
    }
    return sent;
}

#else   /* not Linux: no io_uring */

pg_uring *pg_uring_new(int entries, int nbufs, int bufsize, int nfds, int *err)
{
    (void)entries; (void)nbufs; (void)bufsize; (void)nfds;
    *err = ENOSYS;
    return NULL;
}
void pg_uring_attach(pg_uring *U, pg_loop *L) { (void)U; (void)L; }
int pg_uring_enable(pg_uring *U) { (void)U; return -ENOSYS; }
void pg_uring_free(pg_uring *U) { (void)U; }
int pg_uring_ctl(pg_uring *U, int op, int fd, int kind, int readable, int writable)
{
    (void)U; (void)op; (void)fd; (void)kind; (void)readable; (void)writable;
    return -ENOSYS;
}
void pg_uring_forget(pg_uring *U, int fd) { (void)U; (void)fd; }
int pg_uring_close_fd(pg_uring *U, int fd) { (void)U; return close(fd) < 0 ? -errno : 0; }
int pg_uring_poll(pg_loop *L, int timeout_ms) { (void)L; (void)timeout_ms; return -ENOSYS; }
int64_t pg_uring_flush(pg_loop *L, const int64_t *spec, int64_t nspec)
{
    (void)L; (void)spec; (void)nspec;
    return -ENOSYS;
}
int pg_uring_probe(void) { return -ENOSYS; }
int64_t pg_uring_stat(pg_uring *U, int what) { (void)U; (void)what; return -1; }

#endif
