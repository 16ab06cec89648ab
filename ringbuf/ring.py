"""RingBuffer: a growable byte ring over memory mapped twice back to back.

Because the same pages appear at [0, cap) and [cap, 2*cap), any run of unread bytes - even one
that wraps - is one contiguous memoryview, and writes never need splitting.  Where memfd is not
available (or RINGBUF_PORTABLE=1 is set) a bytearray fallback copies at the wrap instead.

Memory safety: every view handed out is a slice of one memoryview over a cffi buffer whose owner
(an `ffi.gc` pointer) unmaps the pages only when the last view of them is gone.  Growing or
resetting swaps in a new mapping; old views stay valid (and keep the old pages alive).
"""
from __future__ import annotations

import errno
import os
from typing import Any

from ._ringbuf_native import ffi, lib
from .reader import BufferReader

_PAGE = lib.rb_page_size()
_PORTABLE = os.environ.get("RINGBUF_PORTABLE", "") not in ("", "0")


def _round_up(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


def _map_mirror(cap: int) -> tuple[memoryview, Any] | None:
    """A memoryview over 2*cap bytes of mirrored memory plus its owner pointer, or None."""
    base = lib.rb_map_mirror(cap)
    if base == ffi.NULL:
        return None
    unmap = lib.rb_unmap_mirror
    owner = ffi.gc(ffi.cast("char *", base), lambda p: unmap(p, cap), size=2 * cap)
    return memoryview(ffi.buffer(owner, 2 * cap)), owner


def _raise_errno(res: int) -> None:
    err = -res
    raise OSError(err, os.strerror(err))


class RingBuffer(BufferReader):
    """A byte ring whose unread bytes are always one contiguous memoryview (mirrored mode).

    `RingBuffer(size)` holds at least `size` bytes (mirrored capacities are rounded up to whole
    pages); writes beyond the free space grow it, keeping the data.  `reset()` empties it and
    shrinks it back to the first capacity.
    """

    __slots__ = ("_mem", "_ptr", "_cap", "_r", "_n", "_mirrored", "_initial")

    def __init__(self, size: int = 4096) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"RingBuffer size must be positive, got {size}")
        self._initial = size
        self._r = 0
        self._n = 0
        self._allocate(size)

    # -- memory -----------------------------------------------------------------------------
    def _allocate(self, size: int) -> None:
        mapped = None if _PORTABLE else _map_mirror(_round_up(size, _PAGE))
        if mapped is not None:
            self._mem, self._ptr = mapped
            self._cap = len(self._mem) // 2
            self._mirrored = True
        else:
            store = bytearray(size)
            self._mem = memoryview(store)
            self._ptr = ffi.from_buffer("char[]", store)
            self._cap = size
            self._mirrored = False

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
        """True when backed by mirrored memfd pages; False in the portable (copying) fallback."""
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
        if n <= 0:
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
        """Append all of `data` (any bytes-like object), growing if needed; returns its length."""
        src = data if type(data) is memoryview else memoryview(data)
        if src.ndim != 1 or src.itemsize != 1:
            src = src.cast("B")
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
        """Drop every byte and pending virtual read; shrink back to the first capacity."""
        self._r = self._n = self._v = 0
        if self._cap > _round_up(self._initial, _PAGE if self._mirrored else 1):
            self._allocate(self._initial)

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
        if self._n == self._cap:
            self._ensure_free(self._cap)
        w, n1, n2 = self._free_regions()
        if limit and n1 + n2 > limit:
            n1 = min(n1, limit)
            n2 = min(n2, limit - n1)
        res = lib.rb_readv2(fd, self._ptr + w, n1, self._ptr, n2)
        if res > 0:
            self._n += res
        return res

    def read_from(self, fd: int) -> int:
        """readv from `fd` into the free space (growing first if full); returns bytes read,
        0 at EOF.  Raises BlockingIOError when nothing is ready, OSError on other errors."""
        res = self._read_from(fd)
        if res < 0:
            _raise_errno(res)
        return res

    def _write_to(self, fd: int) -> int:
        """Like write_to, but returns -errno instead of raising."""
        n = self._n
        if n == 0:
            return 0
        r = self._r
        cap = self._cap
        if self._mirrored or r + n <= cap:
            res = lib.rb_writev2(fd, self._ptr + r, n, ffi.NULL, 0)
        else:
            res = lib.rb_writev2(fd, self._ptr + r, cap - r, self._ptr, n - (cap - r))
        if res > 0:
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
