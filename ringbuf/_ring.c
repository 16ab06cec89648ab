/* ringbuf native module: mirrored mappings and readv/writev (see _ring.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
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

/* Reserve 2*size of address space, then map the same memfd pages into both halves, so that
   base[i] and base[i + size] are the same byte.  The memfd is closed before returning: the
   mappings keep the pages alive, and no file descriptor is held per ring. */
void *rb_map_mirror(size_t size)
{
    int fd = rb_memfd(size);
    if (fd < 0) return NULL;
    char *base = mmap(NULL, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) { int e = errno; close(fd); errno = e; return NULL; }
    if (mmap(base, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED ||
        mmap(base + size, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
        int e = errno; munmap(base, 2 * size); close(fd); errno = e; return NULL;
    }
    close(fd);
    return base;
}

int rb_unmap_mirror(void *base, size_t size) { return munmap(base, 2 * size); }

/* readv into up to two regions; bytes read, 0 at EOF, or -errno. */
long rb_readv2(int fd, char *p1, size_t n1, char *p2, size_t n2)
{
    struct iovec iov[2] = {{p1, n1}, {p2, n2}};
    ssize_t r = readv(fd, iov, n2 ? 2 : 1);
    return r < 0 ? -errno : (long)r;
}

/* writev from up to two regions; bytes written or -errno.  Sockets are written with sendmsg and
   MSG_NOSIGNAL, so a reset peer gives -EPIPE and never a SIGPIPE; other fds fall back to writev. */
long rb_writev2(int fd, const char *p1, size_t n1, const char *p2, size_t n2)
{
    struct iovec iov[2] = {{(void *)p1, n1}, {(void *)p2, n2}};
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
