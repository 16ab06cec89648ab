/* ringbuf native module: mirrored mappings and readv/writev (see _ring.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "_ring.h"

long rb_page_size(void) { return sysconf(_SC_PAGESIZE); }

/* A memfd of `size` bytes, or -1 with errno set (ENOSYS where memfd does not exist). */
static int rb_memfd(size_t size)
{
#if defined(__linux__) && defined(MFD_CLOEXEC)
    int fd = memfd_create("pygev-ring", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) { int e = errno; close(fd); errno = e; return -1; }
    return fd;
#else
    (void)size; errno = ENOSYS; return -1;
#endif
}

/* Mirrored mappings alive in this process (mapped by rb_map_mirror, not yet unmapped).  Each
   costs two entries of vm.max_map_count; the count is what the Python side budgets against.
   Atomic because the calls run without the GIL (and unmapping runs from any thread's gc). */
static long rb_mirrors;

long rb_mirror_count(void) { return __atomic_load_n(&rb_mirrors, __ATOMIC_RELAXED); }

/* Reserve 2*size of address space, then map the same memfd pages into both halves, so that
   base[i] and base[i + size] are the same byte.  The memfd is closed before returning: the
   mappings keep the pages alive, and no file descriptor is held per ring.  NULL (errno set)
   on failure, or with ENOSPC when `budget` mirrored mappings are already alive: a slot is
   taken before mapping and given back on failure, so racing callers never overshoot. */
void *rb_map_mirror(size_t size, long budget)
{
    if (size == 0 || size > (size_t)PTRDIFF_MAX / 2) { errno = EINVAL; return NULL; }
    if (__atomic_add_fetch(&rb_mirrors, 1, __ATOMIC_RELAXED) > budget) {
        __atomic_sub_fetch(&rb_mirrors, 1, __ATOMIC_RELAXED);
        errno = ENOSPC;
        return NULL;
    }
    int fd = rb_memfd(size);
    char *base = fd < 0 ? MAP_FAILED
                        : mmap(NULL, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base != MAP_FAILED &&
        (mmap(base, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED ||
         mmap(base + size, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)) {
        int e = errno; munmap(base, 2 * size); errno = e;
        base = MAP_FAILED;
    }
    if (fd >= 0) { int e = errno; close(fd); errno = e; }
    if (base == MAP_FAILED) {
        __atomic_sub_fetch(&rb_mirrors, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    return base;
}

int rb_unmap_mirror(void *base, size_t size)
{
    int r = munmap(base, 2 * size);
    if (r == 0) __atomic_sub_fetch(&rb_mirrors, 1, __ATOMIC_RELAXED);
    return r;
}

/* The two transfer calls take the whole buffer (`base`, `span` bytes: what Python read together
   from one cdata) and two runs inside it: [off1, off1 + n1) and [0, n2).  A run that does not
   fit is refused with -EINVAL before any system call, so whatever offsets the caller computed
   (a ring misused from two threads can compute them from a stale capacity), the kernel never
   touches memory outside the buffer the caller keeps alive for the call. */
static int rb_runs_fit(size_t span, size_t off1, size_t n1, size_t n2)
{
    return off1 <= span && n1 <= span - off1 && n2 <= span;
}

/* readv into the two runs; bytes read, 0 at EOF, or -errno. */
long rb_readv2(int fd, char *base, size_t span, size_t off1, size_t n1, size_t n2)
{
    if (!rb_runs_fit(span, off1, n1, n2)) return -EINVAL;
    struct iovec iov[2] = {{base + off1, n1}, {base, n2}};
    ssize_t r = readv(fd, iov, n2 ? 2 : 1);
    return r < 0 ? -errno : (long)r;
}

/* writev from the two runs; bytes written or -errno.  Sockets are written with sendmsg and
   MSG_NOSIGNAL, so a reset peer gives -EPIPE and never a SIGPIPE; other fds fall back to writev. */
long rb_writev2(int fd, const char *base, size_t span, size_t off1, size_t n1, size_t n2)
{
    if (!rb_runs_fit(span, off1, n1, n2)) return -EINVAL;
    struct iovec iov[2] = {{(void *)(base + off1), n1}, {(void *)base, n2}};
    ssize_t r;
#ifdef MSG_NOSIGNAL
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = iov;
    m.msg_iovlen = n2 ? 2 : 1;
    r = sendmsg(fd, &m, MSG_NOSIGNAL);
    if (r >= 0 || errno != ENOTSOCK) return r < 0 ? -errno : (long)r;
#endif
    r = writev(fd, iov, n2 ? 2 : 1);
    return r < 0 ? -errno : (long)r;
}
