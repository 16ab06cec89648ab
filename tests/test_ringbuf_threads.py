"""A RingBuffer misused from two threads must never crash the interpreter.

A ring is for one thread at a time, but a user's bug must cost at most garbled bytes or an
exception: the native transfer calls are handed the buffer object itself (kept alive for the
call) with its length, and refuse any run outside it.  The race that used to crash: thread A's
`read_from` computed its free run from a 1 MiB capacity while thread B's `reset()` swapped in
the small mapping (or unmapped the big one), and readv wrote up to 1 MiB past it.
"""
from __future__ import annotations

import os

import pytest
from support import run_python

import ringbuf.ring as ring_module
from ringbuf import RingBuffer
from ringbuf._ringbuf_native import ffi, lib

TWO_THREADS = r"""
import os, sys, threading, time
from ringbuf import RingBuffer

sys.setswitchinterval(1e-5)           # switch threads often: more interleavings per second
zero = os.open("/dev/zero", os.O_RDONLY)
null = os.open("/dev/null", os.O_WRONLY)
deadline = time.monotonic() + 2.0
calls = [0, 0]

def loop(step, slot):
    while time.monotonic() < deadline:
        try:
            step()
        except Exception:             # misuse may raise (RuntimeError, ValueError, ...); fine
            pass
        calls[slot] += 1

def pair(transfer):
    rb = RingBuffer(4096)
    blob = b"x" * (1 << 20)
    def swap():                       # grow to 1 MiB, then reset() back to the small mapping
        rb.write(blob)
        rb.reset()
    return [threading.Thread(target=loop, args=(lambda: transfer(rb), 0)),
            threading.Thread(target=loop, args=(swap, 1))]

threads = []
for _ in range(3):
    threads += pair(lambda rb: rb.read_from(zero))
threads += pair(lambda rb: rb.write_to(null))
for t in threads:
    t.start()
for t in threads:
    t.join()
assert calls[0] > 0 and calls[1] > 0, calls
print("survived", calls)
"""


@pytest.mark.parametrize("portable", ["0", "1"])
def test_two_threads_on_one_ring_never_crash(portable: str) -> None:
    """read_from / write_to on one thread, write(1 MiB) + reset() on another, for 2 s: the
    interpreter exits normally (run_python fails on a signal, e.g. -11 for SIGSEGV)."""
    out = run_python(TWO_THREADS, {"RINGBUF_PORTABLE": portable}, timeout=60)
    assert "survived" in out


def test_native_transfers_refuse_runs_outside_the_buffer() -> None:
    """The bound check itself: a run past `span` is -EINVAL before any byte moves."""
    store = bytearray(b"\xee" * 32)
    base = ffi.from_buffer("char[]", store)
    fd = os.open("/dev/zero", os.O_RDONLY)
    try:
        for off1, n1, n2 in [(4, 13, 0), (17, 0, 0), (0, 0, 17), (16, 1, 0), (1 << 40, 1, 0)]:
            assert lib.rb_readv2(fd, base, 16, off1, n1, n2) == -22, (off1, n1, n2)
            assert lib.rb_writev2(fd, base, 16, off1, n1, n2) == -22, (off1, n1, n2)
        assert store == b"\xee" * 32
        assert lib.rb_readv2(fd, base, 16, 4, 12, 4) == 16      # exactly fitting runs are fine
        assert store == b"\0" * 16 + b"\xee" * 16
    finally:
        os.close(fd)


class SwapDuringCall:
    """Stands in for the native module: runs the real call, then swaps the ring's memory the
    way another thread's reset() would while the call was in the kernel."""

    def __init__(self, rb: RingBuffer) -> None:
        self.rb = rb

    def __getattr__(self, name: str) -> object:
        return getattr(lib, name)          # mapping calls (reset maps memory) go to the real one

    def rb_readv2(self, *args: object) -> int:
        res = lib.rb_readv2(*args)
        self.rb.reset()
        return res

    def rb_writev2(self, *args: object) -> int:
        res = lib.rb_writev2(*args)
        self.rb.reset()
        return res


def grown_ring() -> tuple[RingBuffer, int]:
    """A ring grown past its first capacity (so reset() swaps in a new, smaller mapping), and
    that first capacity."""
    rb = RingBuffer(4096)
    first = rb.capacity
    rb.write(b"x" * (1 << 18))
    assert rb.capacity > first
    return rb, first


def test_read_from_notices_memory_swapped_during_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    rb, first = grown_ring()
    rb.retrieve_all()
    monkeypatch.setattr(ring_module, "lib", SwapDuringCall(rb))
    fd = os.open("/dev/zero", os.O_RDONLY)
    try:
        with pytest.raises(RuntimeError, match="two threads"):
            rb.read_from(fd)
    finally:
        os.close(fd)
    # The bytes landed in the superseded memory; the ring's own state stays consistent.
    assert len(rb) == 0 and rb.capacity == first and len(rb) + rb.free == rb.capacity


def test_write_to_notices_memory_swapped_during_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    rb, first = grown_ring()
    monkeypatch.setattr(ring_module, "lib", SwapDuringCall(rb))
    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        with pytest.raises(RuntimeError, match="two threads"):
            rb.write_to(fd)
    finally:
        os.close(fd)
    assert len(rb) == 0 and rb.capacity == first and len(rb) + rb.free == rb.capacity
