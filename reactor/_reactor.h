/* reactor native module: the declarations cffi reads (cdef) and _reactor.c includes.
   Plain declarations only (cffi's cdef parser reads this file): no include guards, no macros
   beyond integer constants; include it once, after the system headers. */
typedef struct {
    int type;                 /* 0 none, 1 length field, 2 delimiter, 3 fixed length */
    int len_offset, len_size, adjust, strip, little;
    int64_t max_frame;
    int delim_len;
    unsigned char delim[16];
    int strip_cr;
    int64_t fixed;
} pg_codec;

/* Everything one event loop hands the glue, set up once: calls then pass one pointer. */
typedef struct {
    int pfd;                          /* epoll / kqueue fd */
    void *events; int maxev;          /* event buffer */
    const unsigned char *fdflags; int nflags;   /* per-fd PG_F_* flags */
    char *arena; int64_t arena_size; int64_t read_max;
    pg_codec codec;                   /* frame splitting (type 0: none) */
    int32_t *rows; int maxrows;       /* result rows of a poll */
    int64_t nread;                    /* bytes read into the arena, ever */
    const char *scratch; char **ptrs; /* output sources besides the arena */
    int hdr_width, hdr_little;        /* PG_O_FRAME: length prefix */
    const char *suffix; int suffix_len;          /* PG_O_FRAME: delimiter */
    int64_t *shortw; int nshort;      /* short writes of the last flush: (group, written, queued) */
} pg_loop;

#define PG_K_CONN 0
#define PG_K_LISTEN 1
#define PG_K_WAKE 2

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

#define PG_F_PYREAD 1
#define PG_F_NODELAY 2

#define PG_O_ARENA 0
#define PG_O_SCRATCH 1
#define PG_O_PTR 2
#define PG_O_UINT_BE 3
#define PG_O_UINT_LE 4
#define PG_O_FRAME 5

#define PG_FRAME_TOO_LONG 1
#define PG_FRAME_BAD_LENGTH 2

int pg_event_size(void);
int pg_poller_open(void);
int pg_ctl(int pfd, int op, int fd, int kind, int readable, int writable);
int pg_poll(pg_loop *L, int timeout_ms);
int64_t pg_split(const pg_codec *codec, const char *buf, int64_t len, int fd,
                 int32_t *rows, int maxrows, int *nrows);
int64_t pg_flush(pg_loop *L, const int32_t *spec, int nspec);
int pg_wake_open(int *fds);
int pg_wake(int wfd);
int pg_close(int fd);
int pg_shutdown_write(int fd);
int pg_setsockopt_int(int fd, int level, int opt, int value);
int pg_pending_error(int fd);
int pg_parent_death_signal(int sig);
