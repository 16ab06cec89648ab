"""The reading API shared by RingBuffer and ViewBuffer: everything derived from `_view_at`,
`retrieve` and `len`, so each buffer only says where its bytes are."""
from __future__ import annotations

import operator
from typing import Any, Literal


def whole_number(n: Any, what: str) -> int:
    """`n` as a non-negative integer, or TypeError / ValueError naming `what`."""
    try:
        value = operator.index(n)
    except TypeError:
        raise TypeError(f"{what} must be an integer, not {type(n).__name__!r}") from None
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


def _count(n: Any, method: str) -> int:
    """`n` as a byte count for `method` - the slow path of every call taking one, taken when it
    is not a plain int above 0.  A negative count is a caller's arithmetic gone wrong, so it is
    a ValueError rather than "everything" or "nothing"; a non-integer (which would otherwise
    end up in the cursors) is a TypeError."""
    return whole_number(n, f"{method}() count")


class BufferReader:
    """Read-side API over a run of unread bytes, with netty-style 'virtual' (tentative) reads.

    A virtual read advances a private cursor and hands out a view without consuming anything;
    `virtual_flush()` consumes what was virtually read and `virtual_revert()` forgets it.
    """

    __slots__ = ("_v",)

    def __init__(self) -> None:
        self._v = 0

    # -- what a concrete buffer provides -----------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def _view_at(self, offset: int, n: int) -> memoryview:
        """A read-only-by-convention view of n unread bytes starting `offset` bytes in."""
        raise NotImplementedError

    def retrieve(self, n: int) -> None:
        """Consume (discard) up to n unread bytes (more than buffered consumes all)."""
        raise NotImplementedError

    # -- derived API ---------------------------------------------------------------------------
    @property
    def is_empty(self) -> bool:
        return len(self) == 0

    def peek(self, n: int) -> memoryview:
        """View of the first min(n, len) unread bytes, without consuming them."""
        if type(n) is not int or n < 0:
            n = _count(n, "peek")
        size = len(self)
        return self._view_at(0, n if n < size else size)

    def peek_all(self) -> memoryview:
        """View of every unread byte (one contiguous memoryview)."""
        return self._view_at(0, len(self))

    def retrieve_all(self) -> None:
        """Consume every unread byte."""
        self.retrieve(len(self))

    def read(self, n: int) -> bytes:
        """Copy out and consume up to n bytes."""
        if type(n) is not int or n < 0:
            n = _count(n, "read")
        data = bytes(self.peek(n))
        self.retrieve(len(data))
        return data

    def read_into(self, buf: bytearray | memoryview) -> int:
        """Copy up to len(buf) bytes into `buf` and consume them; returns the count.
        TypeError (nothing consumed) unless `buf` is writable, contiguous and bytes-like."""
        try:
            out = memoryview(buf).cast("B")
        except TypeError:
            out = None
        if out is None or out.readonly:
            raise TypeError(f"read_into() argument must be a writable contiguous bytes-like object, "
                            f"not {type(buf).__name__!r}")
        n = min(len(out), len(self))
        out[:n] = self._view_at(0, n)
        self.retrieve(n)
        return n

    def peek_uint(self, size: int, offset: int = 0,
                  byteorder: Literal["big", "little"] = "big") -> int | None:
        """The unsigned integer of `size` bytes at `offset`, or None when not buffered yet."""
        if offset < 0 or size <= 0 or offset + size > len(self):
            return None
        return int.from_bytes(self._view_at(offset, size), byteorder)

    def virtual_read(self, n: int) -> memoryview:
        """View of the next up to n bytes after earlier virtual reads; consumes nothing yet."""
        if type(n) is not int or n < 0:
            n = _count(n, "virtual_read")
        avail = len(self) - self._v
        if n > avail:
            n = avail
        if n <= 0:
            return memoryview(b"")
        view = self._view_at(self._v, n)
        self._v += n
        return view

    @property
    def virtual_length(self) -> int:
        """Bytes left after the pending virtual reads."""
        return len(self) - self._v

    def virtual_flush(self) -> None:
        """Consume everything virtually read so far."""
        v, self._v = self._v, 0
        if v:
            self.retrieve(v)

    def virtual_revert(self) -> None:
        """Forget pending virtual reads; nothing is consumed."""
        self._v = 0

    def _after_retrieve(self, n: int) -> None:
        """Keep the virtual cursor pointing at the same byte after n bytes were consumed."""
        v = self._v - n
        self._v = v if v > 0 else 0


class ViewBuffer(BufferReader):
    """The reading API over a memoryview (no copy): consuming moves a cursor, nothing else."""

    __slots__ = ("_mv", "_pos")

    def __init__(self, view: memoryview | bytes | bytearray) -> None:
        super().__init__()
        self._mv = view if type(view) is memoryview else memoryview(view)
        self._pos = 0

    def __len__(self) -> int:
        return len(self._mv) - self._pos

    def _view_at(self, offset: int, n: int) -> memoryview:
        start = self._pos + offset
        return self._mv[start:start + n]

    def retrieve(self, n: int) -> None:
        if type(n) is not int or n <= 0:
            n = _count(n, "retrieve")
            if n == 0:
                return
        size = len(self._mv) - self._pos
        if n > size:
            n = size
        self._pos += n
        if self._v:
            self._after_retrieve(n)

    def __repr__(self) -> str:
        return f"<ViewBuffer len={len(self)}>"
