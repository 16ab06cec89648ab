/* io_uring backend of the reactor native module (reactor/_uring.c): the declarations cffi reads.
   Same rules as _reactor.h (plain declarations, integer constants only); build_ffi.py reads this
   file after _reactor.h and _uring.c includes both.

   pg_uring_poll / pg_uring_flush take the same pg_loop and produce the same rows and short-write
   reports as pg_poll / pg_flush; the ring itself hangs off pg_loop.backend.  A pg_uring is made by
   pg_uring_new (NULL and *err = errno when io_uring cannot be set up here) and attached to a
   pg_loop by pg_uring_attach.  Registration (pg_uring_ctl, same ops as pg_ctl) queues SQEs that
   the next poll or flush submits.  Before a registered fd is closed, pg_uring_forget (or
   pg_uring_close_fd, which closes it too) cancels what is in flight for it and bumps its
   generation, so no completion meant for the old fd number is ever applied to a new one. */
typedef struct pg_uring pg_uring;

pg_uring *pg_uring_new(int entries, int nbufs, int bufsize, int nfds, int *err);
void pg_uring_attach(pg_uring *U, pg_loop *L);
int pg_uring_enable(pg_uring *U);
void pg_uring_free(pg_uring *U);
int pg_uring_ctl(pg_uring *U, int op, int fd, int kind, int readable, int writable);
void pg_uring_forget(pg_uring *U, int fd);
int pg_uring_close_fd(pg_uring *U, int fd);
int pg_uring_poll(pg_loop *L, int timeout_ms);
int64_t pg_uring_flush(pg_loop *L, const int64_t *spec, int64_t nspec);
int pg_uring_probe(void);
int64_t pg_uring_stat(pg_uring *U, int what);

/* pg_uring_stat: counters for tests and the bench */
#define PG_US_ENTERS 0       /* io_uring_enter calls */
#define PG_US_REARMS 1       /* multishot receives armed again (ENOBUFS, cancel, ...) */
#define PG_US_STALE 2        /* completions dropped because their fd was forgotten */
#define PG_US_HELD 3         /* receives held back because reading was paused */
#define PG_US_INCREMENTAL 4  /* 1 when the provided buffers are consumed incrementally (6.12+) */
