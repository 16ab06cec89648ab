"""The readiness poller: epoll on Linux, kqueue on BSD/macOS, behind one tiny interface.

The wait itself is `lib.pg_poll` (build_ffi.py): one native call that waits and also reads every
ready connection into the loop's arena, so the loop calls it directly.  This module owns the
registration side.  Facts relied on:
- Level-triggered readiness: a socket left unread (arena full this turn, reading paused) is
  simply reported again on the next wait, so no event is ever lost and no re-arming is needed.
- Write interest (EPOLLOUT) is armed only while a connection has unsent output, so a steady
  state costs no epoll_ctl calls.
- Closing a socket's last descriptor removes it from the epoll set; we never dup sockets, so
  `close(fd)` is enough and a reused fd number starts clean.
- epoll_data carries (kind << 32 | fd): the native code tells listeners, the wake-up fd and
  connections apart without a lookup.
"""
from __future__ import annotations

import os

from ._reactor_native import ffi, lib

KIND_CONN = lib.PG_K_CONN
KIND_LISTEN = lib.PG_K_LISTEN
KIND_WAKE = lib.PG_K_WAKE

_ADD, _MODIFY, _REMOVE = 1, 2, 3


def check(res: int, what: str) -> int:
    """Turn a native -errno result into OSError."""
    if res < 0:
        raise OSError(-res, f"{what}: {os.strerror(-res)}")
    return res


class Poller:
    """One epoll/kqueue instance: register, change and drop interest in file descriptors."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        self.fd = check(lib.pg_poller_open(), "epoll_create1/kqueue")

    def add(self, fd: int, kind: int, readable: bool = True, writable: bool = False) -> None:
        check(lib.pg_ctl(self.fd, _ADD, fd, kind, readable, writable), "poller add")

    def modify(self, fd: int, kind: int, readable: bool, writable: bool) -> int:
        """Change interest; returns 0 or -errno (a closing socket may already be gone)."""
        return lib.pg_ctl(self.fd, _MODIFY, fd, kind, readable, writable)

    def remove(self, fd: int, kind: int) -> int:
        return lib.pg_ctl(self.fd, _REMOVE, fd, kind, 0, 0)

    def close(self) -> None:
        if self.fd >= 0:
            lib.pg_close(self.fd)
            self.fd = -1

    @staticmethod
    def event_size() -> int:
        return lib.pg_event_size()


__all__ = ["KIND_CONN", "KIND_LISTEN", "KIND_WAKE", "Poller", "check", "ffi", "lib"]
