"""The io_uring backend's poller: the same interface as poller.Poller, over one io_uring.

The ring, its provided-buffer ring and the per-fd state live in C (_uring.c, `pg_uring`); this
object owns that pointer and turns registration calls into SQEs that the next poll or flush
submits (no syscall of their own).  Rules:
- Closing a registered fd goes through `close_fd` (or `forget` first): its in-flight requests
  are cancelled and its generation bumped, so a completion for the old fd number is never
  applied to a connection that gets the same number later.
- Only the loop's thread calls these (the SQ has one producer); `close` frees the ring, after
  which nothing may be called.
"""
from __future__ import annotations

from typing import Any

from ._native import ffi, lib

_ADD, _MODIFY = 1, 2
SQ_ENTRIES = 4096           # the CQ is 4x this
BUFFERS = 2048              # provided receive buffers (a power of two) ...
BUFFER_MAX = 65536          # ... of min(read_buffer_size, this) bytes each (pages touched as used)


class UringPoller:
    """One io_uring: register and change interest in file descriptors."""

    __slots__ = ("_U", "fd")
    name = "io_uring"
    poll_fn = lib.pg_uring_poll
    flush_fn = lib.pg_uring_flush

    def __init__(self, read_max: int = 65536, nfds: int = 1024) -> None:
        err = ffi.new("int *")
        U = lib.pg_uring_new(SQ_ENTRIES, BUFFERS, min(read_max, BUFFER_MAX), nfds, err)
        if U == ffi.NULL:
            import os
            raise OSError(err[0], f"io_uring set-up: {os.strerror(err[0])}")
        self._U = U
        self.fd = 0

    def attach(self, L: Any) -> None:
        lib.pg_uring_attach(self._U, L)

    def enable(self) -> None:
        """On the loop's thread, before its first turn: a single-issuer ring binds to it."""
        res = lib.pg_uring_enable(self._U)
        if res < 0:
            import os
            raise OSError(-res, f"io_uring enable: {os.strerror(-res)}")

    def add(self, fd: int, kind: int, readable: bool = True, writable: bool = False) -> None:
        lib.pg_uring_ctl(self._U, _ADD, fd, kind, readable, writable)

    def modify(self, fd: int, kind: int, readable: bool, writable: bool) -> int:
        return lib.pg_uring_ctl(self._U, _MODIFY, fd, kind, readable, writable)

    def forget(self, fd: int) -> None:
        """`fd` is about to be closed by someone else (a listener): cancel what is in flight."""
        if self._U is not None:
            lib.pg_uring_forget(self._U, fd)

    def close_fd(self, fd: int) -> int:
        """Close a registered fd: cancel its requests, bump its generation, close it."""
        if self._U is None:
            return lib.pg_close(fd)
        return lib.pg_uring_close_fd(self._U, fd)

    def stat(self, what: int) -> int:
        return lib.pg_uring_stat(self._U, what) if self._U is not None else -1

    def close(self) -> None:
        if self._U is not None:
            lib.pg_uring_free(self._U)
            self._U = None
            self.fd = -1

    @staticmethod
    def event_size() -> int:
        return lib.pg_event_size()


__all__ = ["UringPoller"]
