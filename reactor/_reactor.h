/* reactor native module: the declarations cffi reads (cdef) and _reactor.c includes.
   Plain declarations only (cffi's cdef parser reads this file): no include guards, no macros
   beyond integer constants; include it once, after the system headers.  Python reads every
   constant below through reactor/_native.py, never by writing the number again.

   Result rows of pg_poll / pg_split: four int32 each, (fd, a, b, code):
     PG_R_DATA        (fd, offset, length)   one read of a connection, in the arena
     PG_R_FRAME       (fd, offset, length)   one whole frame's payload (header / delimiter cut)
     PG_R_PARTIAL     (fd, offset, length)   the unfinished tail of a read: Python keeps it
     PG_R_EOF         (fd, 0, 0)             the peer sent FIN
     PG_R_ERROR       (fd, errno, 0)         read failed (a reset, ...)
     PG_R_READABLE    (fd, 0, 0)             readable, and the fd has PG_F_PYREAD: Python reads
     PG_R_WRITABLE    (fd, 0, 0)             write interest fired
     PG_R_ACCEPT      (listen fd, new fd, source address hash)
     PG_R_ACCEPT_ERROR (listen fd, errno, 0)
     PG_R_WAKE        (wake fd, 0, 0)        the cross-thread inbox has work
     PG_R_FRAME_ERROR (fd, PG_FRAME_*, length)  a frame the codec refuses
     PG_R_LINES       (fd, offset, length)   delimiter codecs with `lines` set: a run of whole
                                             frames, each ending in the delimiter, each within
                                             max_frame and shorter than `small` (Python splits
                                             it with bytes.split; otherwise PG_R_FRAME rows)
     PG_R_UDP         (fd, readable | writable << 1, 0)   a PG_K_UDP socket is ready: Python's
                                             udp module reads it (pg_udp_recv) / writes it
   Rows of one read come together and in stream order; a fd's rows never interleave with
   another read of the same fd within one poll. */
typedef struct {
    int type;                 /* PG_CODEC_* */
    int len_offset, len_size, adjust, strip, little;
    int64_t max_frame;
    int delim_len;
    unsigned char delim[16];
    int strip_cr;
    int64_t fixed;
    int lines;                /* delimiter codec: report runs of small frames as PG_R_LINES */
    int64_t small;            /* frames shorter than this are small */
} pg_codec;

/* Everything one event loop hands the glue, set up once: calls then pass one pointer. */
typedef struct {
    int pfd;                          /* epoll / kqueue fd */
    void *events; int maxev;          /* event buffer */
    unsigned char *fdflags; int nflags;         /* per-fd PG_F_* flags */
    char *arena; int64_t arena_size; int64_t read_max;
    pg_codec codec;                   /* frame splitting (PG_CODEC_NONE: none) */
    int32_t *rows; int maxrows;       /* result rows of a poll */
    int64_t nread;                    /* bytes read into the arena, ever */
    int64_t used;                     /* arena bytes filled by the last poll */
    char *addrs; int addr_size;       /* per-fd peer address from accept (addr_size bytes each) */
    const char *blob; char **ptrs;    /* output sources besides the arena (set per flush) */
    int hdr_width, hdr_little;        /* PG_O_FRAME: length prefix */
    const char *suffix; int suffix_len;          /* PG_O_FRAME: delimiter */
    int64_t *shortw; int nshort;      /* short writes of the last flush: (group, written, queued) */
    void *backend;                    /* io_uring backend: its pg_uring (see _uring.h), else NULL */
} pg_loop;

#define PG_K_CONN 0
#define PG_K_LISTEN 1
#define PG_K_WAKE 2
#define PG_K_UDP 3

#define PG_R_DATA 1
#define PG_R_FRAME 2
#define PG_R_PARTIAL 3
#define PG_R_EOF 4
#define PG_R_ERROR 5
#define PG_R_READABLE 6
#define PG_R_WRITABLE 7
#define PG_R_ACCEPT 8
#define PG_R_ACCEPT_ERROR 9
#define PG_R_WAKE 10
#define PG_R_FRAME_ERROR 11
#define PG_R_LINES 12
#define PG_R_UDP 13

/* per-fd flags */
#define PG_F_PYREAD 1        /* reads of this connection go to its ring: report PG_R_READABLE */
#define PG_F_NODELAY 2       /* listener: set TCP_NODELAY on accepted sockets */
#define PG_F_DISCARD 4       /* a closed connection draining its input: read and drop, EOF row only */

/* output part kinds in a pg_flush spec: (kind, a, b) */
#define PG_O_ARENA 0         /* (offset, length) in the arena */
#define PG_O_BLOB 1          /* (offset, length) in this flush's blob */
#define PG_O_PTR 2           /* (index into ptrs, length) */
#define PG_O_FRAME 3         /* (offset, length) in the arena, framed: hdr_width prefix + suffix */

#define PG_CODEC_NONE 0
#define PG_CODEC_LENGTH 1
#define PG_CODEC_DELIMITER 2
#define PG_CODEC_FIXED 3
#define PG_DELIM_MAX 16

#define PG_FRAME_TOO_LONG 1
#define PG_FRAME_BAD_LENGTH 2

/* UDP (reactor/udp.py): a peer address entry is PG_UDP_ADDR bytes (a sockaddr_in or
   sockaddr_in6, zero padded); a received datagram's row is (true length, PG_UDP_* flags). */
#define PG_UDP_ADDR 28
#define PG_UDP_TRUNC 1

int pg_event_size(void);
int pg_sockaddr_size(void);
int pg_poller_open(void);
int pg_ctl(int pfd, int op, int fd, int kind, int readable, int writable);
int pg_poll(pg_loop *L, int timeout_ms);
int64_t pg_split(const pg_codec *codec, const char *buf, int64_t len, int fd,
                 int32_t *rows, int maxrows, int *nrows);
int64_t pg_flush(pg_loop *L, const int64_t *spec, int64_t nspec);
int64_t pg_frame_headers(const char *src, const int64_t *lens, int64_t n, int width, int little,
                         char *dst);
int pg_wake_open(int *fds);
int pg_wake(int wfd);
int pg_udp_recv(int fd, char *buf, int slot, int n, int32_t *rows, char *addrs);
int pg_udp_send(int fd, const char *blob, const int64_t *lens, const char *addrs, int n, int *err);
int64_t pg_sendfile(int out_fd, int in_fd, int64_t offset, int64_t count);
int pg_close(int fd);
int pg_shutdown_write(int fd);
int pg_setsockopt_int(int fd, int level, int opt, int value);
int pg_parent_death_signal(int sig);
