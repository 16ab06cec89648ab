/* ringbuf native module: the declarations cffi reads (cdef) and the C source includes.
   Plain declarations only (cffi's cdef parser reads this file): no include guards, no macros
   beyond integer constants. */
long rb_page_size(void);
void *rb_map_mirror(size_t size, long budget);
int rb_unmap_mirror(void *base, size_t size);
long rb_mirror_count(void);
long rb_readv2(int fd, char *base, size_t span, size_t off1, size_t n1, size_t n2);
long rb_writev2(int fd, const char *base, size_t span, size_t off1, size_t n1, size_t n2);
