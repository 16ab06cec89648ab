"""pg_flush at the size boundaries: a part of 2 GiB or more is one more part (int64 spec), sent
as far as the socket takes it and reported as a short write, never an overflow."""
from __future__ import annotations

import mmap
import socket

from reactor._native import O_PTR, ffi, lib


def test_a_part_over_2_gib_is_written_in_part_and_reported_short() -> None:
    size = (3 << 30) + 5                      # past int32: the old int32 spec raised OverflowError
    region = mmap.mmap(-1, size, prot=mmap.PROT_READ)   # untouched: reads as zeros, costs no RSS
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        L = ffi.new("pg_loop *")
        ptrs = ffi.new("char *[]", 1)
        pinned = ffi.from_buffer(region)
        ptrs[0] = ffi.cast("char *", pinned)
        short = ffi.new("int64_t[]", 3)
        L.ptrs, L.shortw = ptrs, short
        sent = lib.pg_flush(L, [a.fileno(), 1, O_PTR, 0, size], 5)
        assert 0 < sent < size
        assert L.nshort == 1
        assert list(short) == [0, sent, size]     # group 0, bytes written, bytes queued
        got = b.recv(65536)
        assert got and got == bytes(len(got))
    finally:
        a.close()
        b.close()
        del pinned
        region.close()
