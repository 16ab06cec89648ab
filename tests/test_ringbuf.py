"""RingBuffer behaviour: a model-based state machine against a plain bytes model, plus the
contiguity, sizing, zero-length, fd-transfer and view-lifetime guarantees of the SPEC.

Every test here runs in the mode this process imported ringbuf in (mirrored by default).
`test_other_mode_passes_this_module` re-runs the whole module in a subprocess with
RINGBUF_PORTABLE flipped (the variable is read at import time), so both the mirrored and the
portable (copy-at-the-wrap) implementations are checked by one `pytest` run.
"""
from __future__ import annotations

import mmap
import os
import select
import socket
import subprocess
import sys
import threading

import pytest
from cffi import FFI
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from support import run_python

from ringbuf import RingBuffer

PORTABLE = os.environ.get("RINGBUF_PORTABLE", "") not in ("", "0")
PAGE = mmap.PAGESIZE
_ffi = FFI()
# Distinct-looking bytes (period 251, a prime) so a misplaced or reordered run shows up.
PATTERN = bytes(range(251)) * (3 * 65536 // 251 + 2)


def pattern(n: int, start: int = 0) -> bytes:
    """n bytes of the repeating test pattern, starting at phase `start`."""
    out = bytearray()
    while len(out) < n:
        phase = (start + len(out)) % 251
        out += PATTERN[phase:phase + min(n - len(out), len(PATTERN) - phase)]
    return bytes(out)


def address(view: memoryview) -> int:
    """Address of the first byte of `view` (to tell a view of the ring from a copy)."""
    return int(_ffi.cast("uintptr_t", _ffi.from_buffer(view)))


# -- model-based test ------------------------------------------------------------------------
class RingAgainstBytes(RuleBasedStateMachine):
    """Every RingBuffer operation mirrored on a bytearray plus a virtual-read cursor.

    Assumption (SPEC is silent): consuming bytes (retrieve/read) while virtual reads are
    pending keeps the virtual cursor on the same byte, clipped at the new start.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rb: RingBuffer
        self.model = bytearray()
        self.v = 0          # bytes virtually read, not yet flushed
        self.phase = 0      # pattern phase of the next write

    @initialize(size=st.integers(1, 3 * PAGE))
    def create(self, size: int) -> None:
        self.rb = RingBuffer(size)
        self.first_capacity = self.rb.capacity
        assert self.rb.mirrored is (not PORTABLE)
        assert self.first_capacity >= size
        if self.rb.mirrored:
            assert self.first_capacity % PAGE == 0

    def _consumed(self, n: int) -> None:
        del self.model[:n]
        self.v = max(0, self.v - n)

    @rule(n=st.one_of(st.integers(0, 300), st.integers(0, 3 * PAGE), st.sampled_from([PAGE, 2 * PAGE])))
    def write(self, n: int) -> None:
        data = pattern(n, self.phase)
        self.phase = (self.phase + n) % 251
        cap = self.rb.capacity
        assert self.rb.write(data) == n
        self.model += data
        if len(self.model) <= cap:
            assert self.rb.capacity == cap, "grew although the data fitted"

    @rule(data=st.binary(max_size=64))
    def write_bytearray(self, data: bytes) -> None:
        assert self.rb.write(bytearray(data)) == len(data)
        self.model += data

    @rule()
    def fill_to_full(self) -> None:
        cap = self.rb.capacity
        n = self.rb.free
        data = pattern(n, self.phase)
        self.phase = (self.phase + n) % 251
        assert self.rb.write(memoryview(data)) == n
        self.model += data
        assert self.rb.capacity == cap
        assert self.rb.is_full

    @rule(n=st.integers(0, 5000))
    def read(self, n: int) -> None:
        out = self.rb.read(n)
        assert type(out) is bytes
        assert out == self.model[:n]
        self._consumed(len(out))

    @rule(n=st.integers(0, 5000))
    def read_into(self, n: int) -> None:
        buf = bytearray(b"\xee" * n)
        got = self.rb.read_into(buf)
        assert got == min(n, len(self.model))
        assert buf[:got] == self.model[:got]
        assert buf[got:] == b"\xee" * (n - got), "read_into wrote past the bytes it reported"
        self._consumed(got)

    @rule(n=st.integers(0, 5000))
    def peek(self, n: int) -> None:
        view = self.rb.peek(n)
        assert isinstance(view, memoryview)
        assert bytes(view) == self.model[:n]

    @rule()
    def peek_all(self) -> None:
        view = self.rb.peek_all()
        assert isinstance(view, memoryview)
        assert bytes(view) == self.model

    @rule(n=st.integers(0, 5000))
    def retrieve(self, n: int) -> None:
        self.rb.retrieve(n)
        self._consumed(n)

    @rule()
    def retrieve_all(self) -> None:
        self.rb.retrieve_all()
        self._consumed(len(self.model))

    @rule(size=st.integers(1, 8), offset=st.integers(0, 40), order=st.sampled_from(["big", "little"]))
    def peek_uint(self, size: int, offset: int, order: str) -> None:
        got = self.rb.peek_uint(size, offset, order)  # type: ignore[arg-type]
        if offset + size > len(self.model):
            assert got is None
        else:
            assert got == int.from_bytes(self.model[offset:offset + size], order)  # type: ignore[arg-type]

    @rule(n=st.integers(0, 3000))
    def virtual_read(self, n: int) -> None:
        view = self.rb.virtual_read(n)
        assert isinstance(view, memoryview)
        assert bytes(view) == self.model[self.v:self.v + n]
        self.v += len(view)

    @rule()
    def virtual_flush(self) -> None:
        self.rb.virtual_flush()
        del self.model[:self.v]
        self.v = 0

    @rule()
    def virtual_revert(self) -> None:
        self.rb.virtual_revert()
        self.v = 0

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def reset(self) -> None:
        self.rb.reset()
        self.model.clear()
        self.v = 0
        assert self.rb.capacity == self.first_capacity, "reset() did not shrink back"

    @invariant()
    def sizes_agree(self) -> None:
        rb = self.rb
        assert len(rb) == len(self.model)
        assert len(rb) + rb.free == rb.capacity
        assert rb.capacity >= self.first_capacity
        assert rb.virtual_length == len(self.model) - self.v
        assert rb.is_empty is (len(self.model) == 0)
        assert rb.is_full is (len(self.model) == rb.capacity)
        if rb.mirrored:
            assert rb.capacity % PAGE == 0

    @invariant()
    def contents_agree(self) -> None:
        assert bytes(self.rb.peek_all()) == self.model


TestRingAgainstBytes = RingAgainstBytes.TestCase


# -- contiguity, sizing, zero-length ---------------------------------------------------------
def wrapped_ring() -> tuple[RingBuffer, bytes]:
    """A ring whose 40 unread bytes straddle the end of its memory (10 before, 30 after)."""
    rb = RingBuffer(PAGE)
    cap = rb.capacity
    rb.write(b"a" * (cap - 10))
    rb.retrieve(cap - 20)
    rb.write(b"b" * 30)
    assert rb.capacity == cap and len(rb) == 40
    return rb, b"a" * 10 + b"b" * 30


def test_mode_matches_environment() -> None:
    assert RingBuffer(1).mirrored is (not PORTABLE)


def test_unread_bytes_across_the_wrap_are_one_view() -> None:
    rb, expected = wrapped_ring()
    whole = rb.peek_all()
    assert isinstance(whole, memoryview) and whole.contiguous and whole.nbytes == 40
    assert bytes(whole) == expected
    assert bytes(rb.peek(25)) == expected[:25]
    assert bytes(rb.virtual_read(15)) == expected[:15]
    assert bytes(rb.virtual_read(25)) == expected[15:]
    assert rb.peek_uint(4, 8) == int.from_bytes(expected[8:12], "big")
    if rb.mirrored:
        # No copy at the wrap: the 40-byte view starts where the first unread byte lives.
        assert address(whole) == address(rb.peek(1))
        rb.virtual_revert()
        assert address(rb.virtual_read(40)) == address(whole)
    rb.virtual_flush()
    assert rb.is_empty


def test_read_into_across_the_wrap() -> None:
    rb, expected = wrapped_ring()
    buf = bytearray(64)
    assert rb.read_into(memoryview(buf)) == 40
    assert bytes(buf[:40]) == expected
    assert rb.is_empty and rb.virtual_length == 0


def test_growth_keeps_wrapped_data() -> None:
    rb, expected = wrapped_ring()
    cap = rb.capacity
    more = pattern(3 * cap)
    rb.write(more)
    assert rb.capacity >= 40 + len(more) and rb.capacity > cap
    assert bytes(rb.peek_all()) == expected + more


def test_capacity_rounding_and_reset_shrinks_back() -> None:
    small = RingBuffer(1)
    odd = RingBuffer(PAGE + 1)
    if small.mirrored:
        assert small.capacity == PAGE
        assert odd.capacity == 2 * PAGE
    else:
        assert small.capacity >= 1 and odd.capacity >= PAGE + 1
    first = odd.capacity
    odd.write(pattern(5 * PAGE))
    assert odd.capacity >= 5 * PAGE
    odd.virtual_read(7)
    odd.reset()
    assert odd.capacity == first
    assert len(odd) == 0 and odd.is_empty and odd.virtual_length == 0 and odd.free == first
    odd.write(b"xyz")
    assert bytes(odd.peek_all()) == b"xyz"


def test_invalid_size_is_rejected() -> None:
    with pytest.raises(ValueError):
        RingBuffer(0)
    with pytest.raises(ValueError):
        RingBuffer(-5)


def test_zero_length_operations_are_no_ops() -> None:
    rb = RingBuffer(64)
    rb.write(b"hello")
    rb.virtual_read(2)
    before = (len(rb), rb.free, rb.capacity, rb.virtual_length)
    assert rb.write(b"") == 0
    assert rb.write(memoryview(b"")) == 0
    assert rb.read(0) == b""
    assert bytes(rb.peek(0)) == b""
    rb.retrieve(0)
    assert bytes(rb.virtual_read(0)) == b""
    assert rb.read_into(bytearray()) == 0
    assert (len(rb), rb.free, rb.capacity, rb.virtual_length) == before
    assert bytes(rb.peek_all()) == b"hello"
    empty = RingBuffer(64)
    assert bytes(empty.peek_all()) == b"" and empty.read(10) == b"" and bytes(empty.virtual_read(3)) == b""
    empty.retrieve(10)
    empty.retrieve_all()
    empty.virtual_flush()
    assert empty.is_empty and len(empty) == 0


def test_peek_uint_none_when_too_short() -> None:
    rb = RingBuffer(64)
    assert rb.peek_uint(1) is None
    rb.write(b"\x01\x02\x03")
    assert rb.peek_uint(4) is None
    assert rb.peek_uint(2, offset=2) is None
    assert rb.peek_uint(3) == 0x010203
    assert rb.peek_uint(2, offset=1, byteorder="little") == 0x0302
    assert len(rb) == 3, "peek_uint consumed bytes"


# -- fd transfer -----------------------------------------------------------------------------
def wait_readable(sock: socket.socket, timeout: float = 5.0) -> None:
    ready, _, _ = select.select([sock], [], [], timeout)
    assert ready, "socket never became readable"


def read_until(rb: RingBuffer, sock: socket.socket, total: int) -> None:
    """read_from `sock` until `total` bytes are buffered (each wait bounded)."""
    while len(rb) < total:
        wait_readable(sock)
        assert rb.read_from(sock.fileno()) > 0


def test_read_from_socket() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.settimeout(5)
        rb = RingBuffer(PAGE)
        with pytest.raises(BlockingIOError):
            rb.read_from(a.fileno())
        assert len(rb) == 0
        b.sendall(b"hello")
        read_until(rb, a, 5)
        assert bytes(rb.peek_all()) == b"hello"
        # More than the ring holds: read_from grows a full ring before reading.
        big = pattern(5 * rb.capacity, 7)
        sender = threading.Thread(target=b.sendall, args=(big,))
        sender.start()
        read_until(rb, a, 5 + len(big))
        sender.join(5)
        assert bytes(rb.peek_all()) == b"hello" + big
        b.shutdown(socket.SHUT_WR)
        wait_readable(a)
        assert rb.read_from(a.fileno()) == 0, "EOF must read as 0"
        assert len(rb) == 5 + len(big)


def test_read_from_into_wrapped_free_space() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        rb = RingBuffer(PAGE)
        cap = rb.capacity
        rb.write(b"a" * (cap - 10))
        rb.retrieve(cap - 20)                  # 10 unread bytes end 10 bytes before the wrap
        b.sendall(pattern(100))
        read_until(rb, a, 110)
        assert rb.capacity == cap
        assert bytes(rb.peek_all()) == b"a" * 10 + pattern(100)


def test_write_to_socket_until_it_would_block() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.settimeout(10)
        rb = RingBuffer(PAGE)
        assert rb.write_to(a.fileno()) == 0, "empty ring writes nothing"
        payload = pattern(4 << 20, 3)
        rb.write(payload)
        sent = 0
        while True:
            n = rb.write_to(a.fileno())
            if n == 0:
                break
            sent += n
            assert len(rb) == len(payload) - sent
        assert 0 < sent < len(payload), "a 4 MiB write should fill the socket buffer"
        received = bytearray()

        def drain() -> None:
            while len(received) < len(payload):
                chunk = b.recv(1 << 20)
                if not chunk:
                    return
                received.extend(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        while not rb.is_empty:
            _, ready, _ = select.select([], [a], [], 5)
            assert ready, "socket never became writable"
            sent += rb.write_to(a.fileno())
        reader.join(10)
        assert not reader.is_alive()
        assert sent == len(payload)
        assert bytes(received) == payload


def test_write_to_from_wrapped_data() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        rb, expected = wrapped_ring()
        assert rb.write_to(a.fileno()) == 40
        assert rb.is_empty
        got = b""
        while len(got) < 40:
            got += b.recv(100)
        assert got == expected


def test_write_to_closed_peer_raises() -> None:
    a, b = socket.socketpair()
    with a:
        b.close()
        rb = RingBuffer(64)
        rb.write(b"x")
        with pytest.raises(OSError):
            rb.write_to(a.fileno())


# -- view lifetime ---------------------------------------------------------------------------
VIEWS_OUTLIVE_RING = r"""
import gc
from ringbuf import RingBuffer
rb = RingBuffer(4096)
rb.write(b"A" * 3000)
rb.retrieve(2500)
rb.write(b"B" * 2000)                    # wraps
views = [rb.peek_all(), rb.peek(100), rb.virtual_read(700)]
rb.write(b"C" * 100000)                  # grows: the old memory is superseded
views += [rb.peek_all(), rb.virtual_read(50)]
rb.reset()                               # shrinks: superseded again
rb.write(b"D" * 10)
views.append(rb.peek_all())
del rb
gc.collect()
lengths = [len(v) for v in views]
assert lengths == [2500, 100, 700, 102500, 50, 10], lengths
total = sum(sum(bytes(v)) for v in views)  # touch every byte of every view
junk = [bytearray(1 << 20) for _ in range(32)]   # churn the allocator, then read again
for v in views:
    bytes(v)
    v[0]
    v[-1]
"""


@pytest.mark.parametrize("portable", ["0", "1"])
def test_views_outlive_growth_and_deletion(portable: str) -> None:
    run_python(VIEWS_OUTLIVE_RING, {"RINGBUF_PORTABLE": portable})


# -- the other mode --------------------------------------------------------------------------
def test_other_mode_passes_this_module() -> None:
    """Re-run this module with RINGBUF_PORTABLE flipped, so both implementations are tested."""
    env = dict(os.environ)
    env["RINGBUF_PORTABLE"] = "0" if PORTABLE else "1"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "not test_other_mode_passes_this_module"],
        check=False, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
