"""ringbuf: a standalone ring buffer over mirrored (memfd, mapped twice) memory.

Knows nothing of `reactor`.  See `RingBuffer` for the API and `ViewBuffer` for the same reading
API over a plain memoryview.

Mirrored mappings are budgeted process-wide, because each costs two of the kernel's per-process
map entries (vm.max_map_count) and running out of those makes every mmap in the process fail:
at most `mirror_budget()` are alive at once (default: a quarter of vm.max_map_count's entries;
override with the environment variable RINGBUF_MAX_MIRRORED or `set_mirror_budget(n)`).  Rings
allocated past the budget, or whose mapping fails, use portable bytearray memory instead: same
API, only a view across the wrap is a copy (`RingBuffer.mirrored` says which).
`mirrored_count()` is how many mirrored mappings are alive now.
"""
from .reader import BufferReader, ViewBuffer
from .ring import RingBuffer, mirror_budget, mirrored_count, set_mirror_budget

__all__ = ["BufferReader", "RingBuffer", "ViewBuffer", "mirror_budget", "mirrored_count",
           "set_mirror_budget"]
