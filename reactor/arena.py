"""The memory messages are cut from, and the rule that keeps a kept view honest.

- `Arena`: the block pg_poll reads every ready socket into, refilled from offset 0 each turn.
- `RingRun`: a connection's input ring's readable bytes, for one call of the splitter or of a
  protocol's unpacket.

A view kept past `on_message` must never show other bytes later (SPEC, "Safety rules").  Views
are cut from a memoryview made for the turn (`Arena.turn_view`) or for the call (`RingRun`),
over an exporter object made for that memory.  Each memoryview of an exporter holds one
reference to it, and every slice shares its parent's; so once our own view is dropped, the
exporter's reference count says whether any view of it is still alive - an O(1) check per
turn.  If one is, that memory is retired: left to its views (which keep it alive, since the
exporter keeps the block's owner alive) while a fresh block takes its place.  Kept views keep
reading their own bytes; nothing is ever reused under them.
"""
from __future__ import annotations

import sys
from typing import Any

from ringbuf import RingBuffer

from ._native import ffi

_getrefcount = sys.getrefcount


class Arena:
    """The loop's read arena: the block pg_poll reads every ready socket into, each turn."""

    def __init__(self, size: int) -> None:
        self._alloc = ffi.new_allocator(should_clear_after_alloc=False)
        self.size = size
        self.retired = 0
        self._fresh()

    def _fresh(self) -> None:
        self.cdata = self._alloc("char[]", self.size)
        self._buf = ffi.buffer(self.cdata)      # exporter of every view of this block
        self.mv = memoryview(self._buf)         # internal slicing (copies, spills)
        self._tv: memoryview | None = None
        self._base = _getrefcount(self._buf)

    def turn_view(self) -> memoryview:
        """The memoryview user-facing views of this turn are cut from."""
        tv = self._tv
        if tv is None:      # read-only: messages are inputs (and hashable, like bytes)
            tv = self._tv = memoryview(self._buf).toreadonly()
        return tv

    def end_turn(self) -> bool:
        """Drop the turn's view; True when a view of it survived and the block was retired."""
        if self._tv is None:
            return False
        self._tv = None
        if _getrefcount(self._buf) <= self._base:
            return False
        self.retired += 1
        self._fresh()
        return True

    def is_arena(self, obj: Any) -> bool:
        return obj is self._buf


class RingRun:
    """A ring's readable bytes behind an exporter made for one call, so that views cut from it
    can be told apart afterwards (see the module docstring)."""

    __slots__ = ("buf", "mv", "base")

    def __init__(self, ring: RingBuffer) -> None:
        src = ring.peek_all()
        self.buf = ffi.buffer(ffi.from_buffer(src), len(src))   # keeps the ring's pages alive
        self.mv = memoryview(self.buf).toreadonly()
        self.base = _getrefcount(self.buf)

    def escaped(self) -> bool:
        """Release our view; True when a view of the run is still alive somewhere."""
        mv, self.mv = self.mv, memoryview(b"")
        try:
            mv.release()
        except BufferError:     # something still holds a buffer export of the run itself
            return True
        return _getrefcount(self.buf) > self.base - 1


__all__ = ["Arena", "RingRun"]
