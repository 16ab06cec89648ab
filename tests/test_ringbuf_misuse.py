"""Misusing the public API of RingBuffer / ViewBuffer: a clear exception that leaves the buffer
as it was, never a crash and never a silent wrong answer.

Every test runs on both kinds of ring memory: mirrored (when this process may map it) and
portable (forced for new rings with a mirror budget of 0).
"""
from __future__ import annotations

import array
import copy
import ctypes
import errno
import os
import pickle
import socket
from collections.abc import Iterator

import pytest
from support import run_python

import ringbuf
from ringbuf import RingBuffer, ViewBuffer


@pytest.fixture(params=["mirrored", "portable"])
def make(request: pytest.FixtureRequest) -> Iterator[type[RingBuffer]]:
    """RingBuffer, with new rings of the parametrized kind (mirrored where this process can)."""
    if request.param == "portable":
        before = ringbuf.mirror_budget()
        ringbuf.set_mirror_budget(0)
        try:
            assert not RingBuffer(64).mirrored
            yield RingBuffer
        finally:
            ringbuf.set_mirror_budget(before)
    else:
        yield RingBuffer


def state(rb: RingBuffer) -> tuple[int, int, int, bytes]:
    return len(rb), rb.capacity, rb.virtual_length, bytes(rb.peek_all())


def wrapped(make: type[RingBuffer]) -> RingBuffer:
    """A ring holding b"0123456789" across the end of its memory, 3 bytes virtually read."""
    rb = make(4096)
    cap = rb.capacity
    rb.write(b"x" * (cap - 5))
    rb.retrieve(cap - 5)
    rb.write(b"0123456789")
    rb.virtual_read(3)
    return rb


# -- sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, exc", [
    (0, ValueError), (-1, ValueError), (-(1 << 70), ValueError),
    (1 << 63, ValueError), (1 << 64, ValueError), (1 << 70, ValueError),
    ("4096", TypeError), (4096.0, TypeError), (None, TypeError), (b"1", TypeError),
])
def test_bad_sizes_are_refused(make: type[RingBuffer], size: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="RingBuffer size"):
        make(size)  # type: ignore[arg-type]


def test_unallocatable_size_is_a_memory_error(make: type[RingBuffer]) -> None:
    counted = ringbuf.mirrored_count()
    with pytest.raises(MemoryError):
        make(1 << 61)
    assert ringbuf.mirrored_count() == counted, "a failed mapping kept its budget slot"


def test_index_like_sizes_and_counts_are_accepted(make: type[RingBuffer]) -> None:
    class Index:
        def __init__(self, n: int) -> None:
            self.n = n

        def __index__(self) -> int:
            return self.n

    rb = make(Index(100))  # type: ignore[arg-type]
    assert rb.capacity >= 100
    rb.write(b"abcdef")
    assert bytes(rb.peek(Index(2))) == b"ab"  # type: ignore[arg-type]
    rb.retrieve(Index(1))  # type: ignore[arg-type]
    assert rb.read(Index(2)) == b"bc"  # type: ignore[arg-type]
    assert bytes(rb.virtual_read(Index(2))) == b"de"  # type: ignore[arg-type]
    assert state(rb) == (3, rb.capacity, 1, b"def")


# -- counts --------------------------------------------------------------------------------------
COUNTED = ["peek", "read", "retrieve", "virtual_read"]


@pytest.mark.parametrize("method", COUNTED)
def test_negative_counts_are_value_errors(make: type[RingBuffer], method: str) -> None:
    """A negative count is a caller's arithmetic gone wrong: not "everything" (peek(-1) used
    to hand out the whole buffer) and not a silent no-op."""
    rb = wrapped(make)
    before = state(rb)
    for n in (-1, -(1 << 80)):
        with pytest.raises(ValueError, match=f"{method}\\(\\) count"):
            getattr(rb, method)(n)
    assert state(rb) == before


@pytest.mark.parametrize("method", COUNTED)
def test_non_integer_counts_are_type_errors(make: type[RingBuffer], method: str) -> None:
    """retrieve(1.5) used to store 1.5 in the cursors and break the ring for good."""
    rb = wrapped(make)
    before = state(rb)
    for n in (1.5, "3", None, b"\x01"):
        with pytest.raises(TypeError, match=f"{method}\\(\\) count"):
            getattr(rb, method)(n)
    assert state(rb) == before
    rb.write(b"!")
    assert bytes(rb.peek_all()) == b"0123456789!"


def test_huge_counts_clip_to_what_is_buffered(make: type[RingBuffer]) -> None:
    rb = wrapped(make)
    huge = 1 << 80
    assert bytes(rb.peek(huge)) == b"0123456789"
    assert bytes(rb.virtual_read(huge)) == b"3456789"
    assert rb.virtual_length == 0
    rb.virtual_revert()
    assert rb.peek_uint(huge) is None and rb.peek_uint(1, huge) is None
    assert rb.peek_uint(2, -1) is None and rb.peek_uint(0) is None and rb.peek_uint(-2) is None
    assert rb.read(huge) == b"0123456789"
    rb.write(b"abc")
    rb.retrieve(huge)
    assert state(rb) == (0, rb.capacity, 0, b"")


@pytest.mark.parametrize("method, args", [("peek", (-1,)), ("peek", (1.5,)), ("retrieve", (-1,)),
                                          ("retrieve", (1.5,)), ("read", (-1,)),
                                          ("virtual_read", (-1,)), ("virtual_read", ("2",))])
def test_view_buffer_checks_counts_too(method: str, args: tuple[object, ...]) -> None:
    buf = ViewBuffer(b"hello")
    with pytest.raises((TypeError, ValueError)):
        getattr(buf, method)(*args)
    assert len(buf) == 5 and bytes(buf.peek_all()) == b"hello"


# -- write / read_into arguments -----------------------------------------------------------------
@pytest.mark.parametrize("data", [42, "text", None, 1.5, [1, 2], object()])
def test_write_of_a_non_bytes_object_is_a_type_error_naming_write(make: type[RingBuffer],
                                                                   data: object) -> None:
    rb = wrapped(make)
    before = state(rb)
    with pytest.raises(TypeError, match=r"write\(\) argument must be a bytes-like object"):
        rb.write(data)
    assert state(rb) == before


def test_write_takes_any_bytes_like_layout(make: type[RingBuffer]) -> None:
    """Signed/char formats, multi-byte items, 2-D and strided views are written as their raw
    bytes (signed bytes and ctypes char arrays used to be refused with a ValueError)."""
    rb = wrapped(make)
    rb.retrieve_all()
    cases: list[tuple[object, bytes]] = [
        (array.array("b", [1, -1]), b"\x01\xff"),
        (array.array("H", [0x0102]), array.array("H", [0x0102]).tobytes()),
        ((ctypes.c_char * 3)(b"x", b"y", b"z"), b"xyz"),
        ((ctypes.c_uint8 * 2)(7, 8), b"\x07\x08"),
        (memoryview(b"abcdef").cast("B", (2, 3)), b"abcdef"),
        (memoryview(b"abcdef")[::2], b"ace"),
        (memoryview(bytes(range(12))).cast("B", (3, 4))[::2], bytes([0, 1, 2, 3, 8, 9, 10, 11])),
        (bytearray(b"ba"), b"ba"),
    ]
    expected = b""
    for data, raw in cases:
        assert rb.write(data) == len(raw)
        expected += raw
    assert bytes(rb.peek_all()) == expected


def test_write_of_the_rings_own_view(make: type[RingBuffer]) -> None:
    rb = wrapped(make)
    rb.write(rb.peek_all())                       # fits: copied within the ring
    assert bytes(rb.peek_all()) == b"0123456789" * 2
    big = b"q" * (2 * rb.capacity)
    rb.write(big)
    rb.write(rb.peek_all())                       # grows while the source views old memory
    assert bytes(rb.peek_all()) == (b"0123456789" * 2 + big) * 2


@pytest.mark.parametrize("buf", [b"xxxx", 42, memoryview(bytearray(8))[::2], "text"])
def test_read_into_an_unwritable_target_is_a_type_error(make: type[RingBuffer], buf: object) -> None:
    rb = wrapped(make)
    before = state(rb)
    with pytest.raises(TypeError, match=r"read_into\(\) argument"):
        rb.read_into(buf)  # type: ignore[arg-type]
    assert state(rb) == before


# -- file descriptors ----------------------------------------------------------------------------
def closed_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def test_fd_transfers_on_a_closed_fd_are_os_errors(make: type[RingBuffer]) -> None:
    rb = wrapped(make)
    before = state(rb)
    for fd in (closed_fd(), -1):
        with pytest.raises(OSError) as info:
            rb.read_from(fd)
        assert info.value.errno == errno.EBADF
        with pytest.raises(OSError) as info:
            rb.write_to(fd)
        assert info.value.errno == errno.EBADF
        assert state(rb) == before
    full = make(64)
    full.write(b"f" * full.capacity)
    with pytest.raises(OSError):
        full.read_from(closed_fd())            # a full ring grows first; the data is kept
    assert bytes(full.peek_all()) == b"f" * len(full)


@pytest.mark.parametrize("fd", [socket.socket, "3", 3.0, None])
def test_fd_transfers_want_an_integer_fd(make: type[RingBuffer], fd: object) -> None:
    rb = wrapped(make)
    before = state(rb)
    if fd is socket.socket:
        fd = socket.socket()
    try:
        for call in (rb.read_from, rb.write_to):
            with pytest.raises(TypeError):
                call(fd)  # type: ignore[arg-type]
    finally:
        if isinstance(fd, socket.socket):
            fd.close()
    assert state(rb) == before
    with pytest.raises(OverflowError):
        rb.read_from(1 << 40)
    assert state(rb) == before


def test_read_from_a_directory_or_write_to_a_read_only_fd(make: type[RingBuffer]) -> None:
    rb = wrapped(make)
    before = state(rb)
    fd = os.open("/", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            rb.read_from(fd)
        assert info.value.errno == errno.EISDIR
        with pytest.raises(OSError):
            rb.write_to(fd)
    finally:
        os.close(fd)
    assert state(rb) == before


# -- virtual reads and reset ---------------------------------------------------------------------
def test_reset_drops_pending_virtual_reads(make: type[RingBuffer]) -> None:
    rb = wrapped(make)
    first = rb.capacity
    pending = rb.virtual_read(4)                   # 3 + 4 bytes virtually read
    assert bytes(pending) == b"3456"
    rb.reset()
    assert state(rb) == (0, first, 0, b"")
    rb.virtual_flush()                             # nothing pending any more: consumes nothing
    rb.write(b"abcdef")
    rb.virtual_flush()
    assert state(rb) == (6, first, 6, b"abcdef")
    assert bytes(rb.virtual_read(2)) == b"ab"
    rb.reset()
    rb.virtual_revert()
    assert rb.virtual_length == 0 and rb.is_empty
    assert bytes(rb.virtual_read(5)) == b""


def test_views_from_before_a_shrinking_reset_keep_their_bytes(make: type[RingBuffer]) -> None:
    rb = make(4096)
    first = rb.capacity
    rb.write(b"A" * (3 * first))                   # grown
    view = rb.virtual_read(first + 5)
    rb.reset()                                     # swaps in the first-capacity memory
    rb.write(b"B" * first)
    assert rb.capacity == first
    assert bytes(view) == b"A" * (first + 5), "a view of the old memory changed under its holder"
    rb.virtual_flush()
    assert state(rb) == (first, first, first, b"B" * first)


# -- copying -------------------------------------------------------------------------------------
def test_copy_and_pickle_are_refused(make: type[RingBuffer]) -> None:
    """A shallow copy used to share (and so corrupt) the original's memory."""
    rb = wrapped(make)
    for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="cannot be copied"):
            attempt(rb)
    clone = make(4096)
    clone.write(rb.peek_all())                     # the documented way
    assert bytes(clone.peek_all()) == bytes(rb.peek_all())


# -- garbage collection ----------------------------------------------------------------------------
RINGS_IN_CYCLES = r"""
import gc
import ringbuf
from ringbuf import RingBuffer

class Owner:
    pass

for budget in (None, 0):                 # mirrored, then portable memory
    ringbuf.set_mirror_budget(budget)
    for i in range(300):
        o = Owner()
        o.rb = RingBuffer(4096)
        o.rb.write(b"x" * (4096 * (1 + i % 3)))         # some grown
        o.views = [o.rb.peek_all(), o.rb.virtual_read(10)]
        o.me = o                                         # a cycle: only the collector frees it
        if i % 7 == 0:
            o.rb.reset()
        del o
        if i % 50 == 0:
            gc.collect()
    gc.collect()
assert ringbuf.mirrored_count() == 0, ringbuf.mirrored_count()
print("ok")
"""


def test_rings_in_reference_cycles_are_collected_safely() -> None:
    """Rings, their views and their memory owners freed by the cycle collector, in any order."""
    assert "ok" in run_python(RINGS_IN_CYCLES, {"RINGBUF_PORTABLE": "0"})
