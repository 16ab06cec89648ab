"""The readiness poller: epoll on Linux, kqueue on BSD/macOS, behind one tiny interface.

The poller knows file descriptors and their kind only.  The wait itself is `lib.pg_poll`
(_reactor.c): one native call that waits and also reads every ready connection into the loop's
arena; the loop takes it (and the flush, `lib.pg_flush`) from `poll_fn` / `flush_fn` once.  This
module owns the registration side.  Facts relied on:
- Level-triggered readiness: a socket left unread (arena full this turn, reading paused) is
  simply reported again on the next wait, so no event is ever lost and no re-arming is needed.
- Write interest (EPOLLOUT) is armed only while a connection has unsent output, so a steady
  state costs no epoll_ctl calls.
- Closing a socket's last descriptor removes it from the epoll set; we never dup sockets, so
  `close(fd)` is enough and a reused fd number starts clean (`forget` has nothing to do).
- epoll_data carries (kind << 32 | fd): the native code tells listeners, the wake-up fd and
  connections apart without a lookup.
The io_uring backend (poller_uring.py) has the same interface.
"""
from __future__ import annotations

from typing import Any

from ._native import check, lib

_ADD, _MODIFY = 1, 2


class Poller:
    """One epoll/kqueue instance: register and change interest in file descriptors."""

    __slots__ = ("fd",)
    name = "epoll"
    poll_fn = lib.pg_poll
    flush_fn = lib.pg_flush
    close_fd = staticmethod(lib.pg_close)     # close a registered fd (nothing to forget first)

    def __init__(self, read_max: int = 65536, nfds: int = 1024) -> None:
        self.fd = check(lib.pg_poller_open(), "epoll_create1/kqueue")

    def attach(self, L: Any) -> None:
        """Hand the native loop struct what the poll needs from us."""
        L.pfd = self.fd

    def enable(self) -> None:
        """On the loop's thread, before its first turn (nothing to do for epoll)."""

    def add(self, fd: int, kind: int, readable: bool = True, writable: bool = False) -> None:
        check(lib.pg_ctl(self.fd, _ADD, fd, kind, readable, writable), "poller add")

    def modify(self, fd: int, kind: int, readable: bool, writable: bool) -> int:
        """Change interest; returns 0 or -errno (a closing socket may already be gone)."""
        return lib.pg_ctl(self.fd, _MODIFY, fd, kind, readable, writable)

    def forget(self, fd: int) -> None:
        """`fd` is about to be closed by someone else (a listener)."""

    def close(self) -> None:
        if self.fd >= 0:
            lib.pg_close(self.fd)
            self.fd = -1

    @staticmethod
    def event_size() -> int:
        return lib.pg_event_size()


__all__ = ["Poller"]
