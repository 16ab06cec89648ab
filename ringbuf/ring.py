"""RingBuffer: a growable byte ring over memory mapped twice back to back.

Because the same pages appear at [0, cap) and [cap, 2*cap), any run of unread bytes - even one
that wraps - is one contiguous memoryview, and writes never need splitting.  Where memfd is not
available (or RINGBUF_PORTABLE=1 is set) a bytearray fallback copies at the wrap instead.

Mapping budget: each mirrored mapping costs two entries of the kernel's per-process map limit
(vm.max_map_count, 65530 by default), and once that limit is reached every mmap of the process
fails - Python's allocator included.  So mirrored mappings are budgeted process-wide: at most
`mirror_budget()` are alive at once (default: a quarter of vm.max_map_count's entries, i.e.
max_map_count // 8 mappings; the environment variable RINGBUF_MAX_MIRRORED, read at import, or
`set_mirror_budget(n)` at run time overrides it).  Past the budget - or when the mapping itself
fails (ENOMEM, no memfd) - a ring gets the portable bytearray memory instead: it works the same,
only `peek`/`virtual_read` across the wrap copy.  The `mirrored` property says which a ring has;
every allocation (creation, growth, the shrink in `reset`) chooses again.  A mapping gives its
slot back when it is unmapped: when the ring and every view of that memory are gone.

Memory safety: every view handed out is a slice of one memoryview over a cffi buffer whose owner
(an `ffi.gc` pointer) unmaps the pages only when the last view of them is gone.  Growing or
resetting swaps in a new mapping; old views stay valid (and keep the old pages alive).  The
native transfer calls receive the owning pointer together with its length and check every run
against it, so even a ring misused from two threads (not supported: a RingBuffer is for one
thread at a time) never makes the kernel touch memory outside a live buffer.
"""
from __future__ import annotations

import errno
import operator
import os
import sys
from typing import Any

from ._ringbuf_native import ffi, lib
from .reader import BufferReader, _count, whole_number

_PAGE = lib.rb_page_size()
_PORTABLE = os.environ.get("RINGBUF_PORTABLE", "") not in ("", "0")
_MAX_SIZE = sys.maxsize // 2          # 2*capacity (the mirrored span) must fit a Py_ssize_t
_BUDGET_CAP = (1 << 31) - 1           # any budget above this is "unlimited" (fits a C long)
_DEFAULT_MAP_COUNT = 65530            # Linux's default vm.max_map_count


def _round_up(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


# -- mapping budget ----------------------------------------------------------------------------
def _budget_value(n: Any, what: str) -> int:
    """`n` checked as a budget (a non-negative integer); `what` names it in the error."""
    return min(whole_number(n, what), _BUDGET_CAP)


def _default_budget() -> int:
    """RINGBUF_MAX_MIRRORED when set, else mappings for a quarter of vm.max_map_count."""
    env = os.environ.get("RINGBUF_MAX_MIRRORED", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"RINGBUF_MAX_MIRRORED must be an integer, got {env!r}") from None
        return _budget_value(value, "RINGBUF_MAX_MIRRORED")
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            map_count = int(f.read())
    except (OSError, ValueError):
        map_count = _DEFAULT_MAP_COUNT
    return max(map_count, 0) // 8       # two map entries per mirrored mapping


_budget = _default_budget()


def set_mirror_budget(n: int | None) -> None:
    """Allow at most `n` mirrored mappings alive in this process (None: back to the default).

    Rings allocated past it use the portable bytearray memory; rings already mirrored keep
    their mapping.  0 makes every new allocation portable."""
    global _budget
    _budget = _default_budget() if n is None else _budget_value(n, "mirror budget")


def mirror_budget() -> int:
    """How many mirrored mappings may be alive at once in this process."""
    return _budget


def mirrored_count() -> int:
    """How many mirrored mappings are alive in this process now (each costs two map entries)."""
    return int(lib.rb_mirror_count())


def _map_mirror(cap: int) -> tuple[memoryview, Any] | None:
    """A memoryview over 2*cap bytes of mirrored memory plus its owner pointer (either keeps
    the mapping alive), or None when the budget is spent or the mapping fails."""
    base = lib.rb_map_mirror(cap, _budget)
    if base == ffi.NULL:
        return None
    unmap = lib.rb_unmap_mirror
    owner = ffi.gc(ffi.cast("char *", base), lambda p: unmap(p, cap), size=2 * cap)
    return memoryview(ffi.buffer(owner, 2 * cap)), owner


def _raise_errno(res: int) -> None:
    err = -res
    raise OSError(err, os.strerror(err))


def _flat_bytes(src: memoryview) -> memoryview:
    """`src` as one dimension of unsigned bytes, the layout ring memory has (`write`'s slow
    path, for arrays, ctypes and multi-dimensional buffers); copies only when not contiguous."""
    return src.cast("B") if src.c_contiguous else memoryview(src.tobytes())


_SWAPPED = ("RingBuffer used from two threads at once: its memory was replaced (reset or growth) "
            "during {}; the bytes transferred are lost")


class RingBuffer(BufferReader):
    """A byte ring whose unread bytes are always one contiguous memoryview (mirrored mode).

    `RingBuffer(size)` holds at least `size` bytes (mirrored capacities are rounded up to whole
    pages); writes beyond the free space grow it, keeping the data.  `reset()` empties it and
    shrinks it back to the first capacity.

    The memory is mirrored while the process-wide mapping budget has room (see
    `mirror_budget()`); past it, or when mapping fails, the ring uses portable bytearray
    memory instead - same API and guarantees, except that a view across the wrap is a copy.
    `mirrored` tells which.  Not thread-safe: use a ring from one thread at a time.  Misuse
    from two threads can lose or garble bytes (a transfer that notices its memory was swapped
    raises RuntimeError) but never touches memory outside a live buffer.
    """

    __slots__ = ("_mem", "_native", "_cap", "_r", "_n", "_mirrored", "_initial")

    def __init__(self, size: int = 4096) -> None:
        super().__init__()
        try:
            size = operator.index(size)
        except TypeError:
            raise TypeError(f"RingBuffer size must be an integer, not {type(size).__name__!r}") from None
        if not 0 < size <= _MAX_SIZE:
            raise ValueError(f"RingBuffer size must be between 1 and {_MAX_SIZE}, got {size}")
        self._r = 0
        self._n = 0
        self._allocate(size)
        self._initial = self._cap         # what reset() shrinks back to, in either mode

    # -- memory -----------------------------------------------------------------------------
    def _allocate(self, size: int) -> None:
        """Switch to fresh memory of at least `size` bytes: mirrored when the budget allows and
        the mapping succeeds, else a bytearray.

        `_native` is (owning pointer, length in bytes) of that memory, one attribute so that a
        transfer reads both at once; holding the tuple keeps the memory alive for the call, and
        the native side checks every run against that length.  (The pointer is the mapping's
        gc owner or a `from_buffer` of the bytearray - never a `from_buffer` of a memoryview,
        which CPython 3.11's cycle collector can crash on.)"""
        mapped = None if _PORTABLE else _map_mirror(_round_up(size, _PAGE))
        if mapped is not None:
            mem, owner = mapped
            self._cap = len(mem) // 2
            self._mirrored = True
        else:
            store = bytearray(size)
            mem = memoryview(store)
            owner = ffi.from_buffer("char[]", store)
            self._cap = size
            self._mirrored = False
        self._mem = mem
        self._native = (owner, len(mem))

    def _regrow(self, size: int) -> None:
        """Move the unread bytes to a fresh mapping of at least `size` bytes, starting at 0."""
        old = self._view_at(0, self._n)
        self._allocate(size)
        self._mem[:len(old)] = old
        self._r = 0

    def _ensure_free(self, n: int) -> None:
        need = self._n + n
        if need > self._cap:
            cap = self._cap
            while cap < need:
                cap *= 2
            self._regrow(cap)

    # -- sizes ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def free(self) -> int:
        return self._cap - self._n

    @property
    def is_full(self) -> bool:
        return self._n == self._cap

    @property
    def mirrored(self) -> bool:
        """True when backed by mirrored memfd pages; False in the portable (copying) fallback
        (RINGBUF_PORTABLE, no memfd, a failed mapping or the mapping budget spent)."""
        return self._mirrored

    # -- reading ----------------------------------------------------------------------------
    def _view_at(self, offset: int, n: int) -> memoryview:
        s = self._r + offset
        cap = self._cap
        if s >= cap:
            s -= cap
        if self._mirrored or s + n <= cap:
            return self._mem[s:s + n]
        head = self._mem[s:cap]
        return memoryview(bytes(head) + bytes(self._mem[:n - len(head)]))

    def retrieve(self, n: int) -> None:
        if type(n) is not int or n <= 0:
            n = _count(n, "retrieve")
            if n == 0:
                return
        if n >= self._n:
            n = self._n
            self._r = self._n = 0
        else:
            r = self._r + n
            self._r = r - self._cap if r >= self._cap else r
            self._n -= n
        if self._v:
            self._after_retrieve(n)

    # -- writing ----------------------------------------------------------------------------
    def write(self, data: Any) -> int:
        """Append all of `data` (any bytes-like object), growing if needed; returns its length.
        TypeError (nothing written) when `data` is not bytes-like."""
        try:
            src = data if type(data) is memoryview else memoryview(data)
        except TypeError:
            raise TypeError(f"write() argument must be a bytes-like object, not "
                            f"{type(data).__name__!r}") from None
        if src.format != "B" or src.ndim != 1:
            src = _flat_bytes(src)
        n = len(src)
        if n == 0:
            return 0
        if n > self._cap - self._n:
            self._ensure_free(n)
        w = self._r + self._n
        cap = self._cap
        if w >= cap:
            w -= cap
        if self._mirrored or w + n <= cap:
            self._mem[w:w + n] = src
        else:
            k = cap - w
            self._mem[w:cap] = src[:k]
            self._mem[:n - k] = src[k:]
        self._n += n
        return n

    def reset(self) -> None:
        """Drop every byte and pending virtual read; shrink back to the first capacity.

        Views handed out earlier stay readable (grown memory stays mapped while they live), but
        like views of retrieved bytes they may show newer bytes once that space is written."""
        self._r = self._n = self._v = 0
        if self._cap > self._initial:
            self._allocate(self._initial)

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Refuse copy/pickle: a shallow copy would share (and corrupt) this ring's memory."""
        raise TypeError("RingBuffer cannot be copied or pickled; copy its bytes instead "
                        "(RingBuffer(n).write(ring.peek_all()))")

    # -- file descriptors -------------------------------------------------------------------
    def _free_regions(self) -> tuple[int, int, int]:
        """(write offset, first run, second run) of the free space; the second only when copying."""
        w = self._r + self._n
        cap = self._cap
        if w >= cap:
            w -= cap
        free = cap - self._n
        if self._mirrored or w + free <= cap:
            return w, free, 0
        return w, cap - w, free - (cap - w)

    def _read_from(self, fd: int, limit: int = 0) -> int:
        """Like read_from, but returns -errno instead of raising (for the reactor's hot path)."""
        if self._n >= self._cap:
            self._ensure_free(self._cap)
        native = self._native               # held for the call: the memory stays mapped
        w, n1, n2 = self._free_regions()
        if limit and n1 + n2 > limit:
            n1 = min(n1, limit)
            n2 = min(n2, limit - n1)
        res = lib.rb_readv2(fd, native[0], native[1], w, n1, n2)
        if res > 0:
            if self._native is not native:
                raise RuntimeError(_SWAPPED.format("read_from"))
            self._n += res
        return res

    def read_from(self, fd: int) -> int:
        """readv from `fd` into the free space (growing first if full); returns bytes read,
        0 at EOF.  Raises BlockingIOError when nothing is ready, OSError on other errors
        (EBADF for a closed fd)."""
        res = self._read_from(fd)
        if res < 0:
            _raise_errno(res)
        return res

    def _write_to(self, fd: int) -> int:
        """Like write_to, but returns -errno instead of raising."""
        n = self._n
        if n <= 0:
            return 0
        native = self._native               # held for the call: the memory stays mapped
        r = self._r
        cap = self._cap
        if self._mirrored or r + n <= cap:
            res = lib.rb_writev2(fd, native[0], native[1], r, n, 0)
        else:
            res = lib.rb_writev2(fd, native[0], native[1], r, cap - r, n - (cap - r))
        if res > 0:
            if self._native is not native:
                raise RuntimeError(_SWAPPED.format("write_to"))
            self.retrieve(res)
        return res

    def write_to(self, fd: int) -> int:
        """writev the unread bytes to `fd` and consume what was taken; returns that count
        (0 when the fd would block or the ring is empty).  Raises OSError on other errors."""
        res = self._write_to(fd)
        if res < 0:
            if -res in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            _raise_errno(res)
        return res

    def __repr__(self) -> str:
        kind = "mirrored" if self._mirrored else "portable"
        return f"<RingBuffer {kind} len={self._n} capacity={self._cap}>"
