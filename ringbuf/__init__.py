"""ringbuf: a standalone ring buffer over mirrored (memfd, mapped twice) memory.

Knows nothing of `reactor`.  See `RingBuffer` for the API and `ViewBuffer` for the same reading
API over a plain memoryview.
"""
from .reader import BufferReader, ViewBuffer
from .ring import RingBuffer

__all__ = ["BufferReader", "RingBuffer", "ViewBuffer"]
