"""Which I/O backend a Server uses: "epoll" (kqueue on BSD/macOS) or "io_uring" (Linux), decided
once per Server (SPEC "Backends").

- `Server(backend="io_uring")` where io_uring cannot be set up (a kernel too old, ENOSYS; EPERM
  from kernel.io_uring_disabled or a seccomp filter as in default container profiles) raises
  OSError naming the cause, at construction.
- `backend=None` takes the `PYGEV_BACKEND` environment variable when set (so that the whole test
  suite can run on either backend), else DEFAULT.  Where that choice is io_uring and io_uring
  is unavailable, epoll is used and the reason logged once, at INFO, on "reactor.backends".
- DEFAULT stays "epoll" until the bench shows io_uring ahead in every cell (bench/servers.py
  has both).

Whether io_uring works is probed once per process (a small ring, a provided-buffer ring and a
multishot receive on a socketpair), and cached.
"""
from __future__ import annotations

import logging
import os
from typing import Literal

from ._native import lib

Backend = Literal["epoll", "io_uring"]

log = logging.getLogger("reactor.backends")

BACKENDS = ("epoll", "io_uring")
DEFAULT = "epoll"
ENV = "PYGEV_BACKEND"

_status: str | None = None          # "" when io_uring works, else why not (probed once)
_fallback_logged = False


def _probe() -> str:
    """"" when an io_uring backend can be set up here, else the reason it cannot."""
    res = lib.pg_uring_probe()
    if res == 0:
        return ""
    err = -res
    why = os.strerror(err)
    if err == 38:       # ENOSYS
        return f"io_uring is not available in this kernel ({why})"
    if err == 1:        # EPERM
        return (f"io_uring is not permitted here ({why}: kernel.io_uring_disabled or a seccomp "
                "filter)")
    return f"io_uring cannot be set up ({why})"


def uring_unavailable() -> str:
    """Why io_uring cannot be used here ("" when it can); probed once per process."""
    global _status
    if _status is None:
        _status = _probe()
    return _status


def check_name(value: object) -> None:
    """TypeError / ValueError for a backend argument that is not None or a known name."""
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"backend must be None or a str ({', '.join(map(repr, BACKENDS))}), "
                        f"not {type(value).__name__}")
    if value not in BACKENDS:
        raise ValueError(f"backend must be None, {' or '.join(map(repr, BACKENDS))}, not {value!r}")


def resolve(requested: str | None) -> str:
    """The backend a Server with `backend=requested` uses (see the module docstring)."""
    global _fallback_logged
    if requested is None:
        env = os.environ.get(ENV) or None
        if env is not None and env not in BACKENDS:
            raise ValueError(f"{ENV} must be one of {', '.join(BACKENDS)}, not {env!r}")
        choice = env or DEFAULT
        if choice == "io_uring":
            why = uring_unavailable()
            if why:
                if not _fallback_logged:
                    _fallback_logged = True
                    log.info("using the epoll backend: %s", why)
                return "epoll"
        return choice
    if requested == "io_uring":
        why = uring_unavailable()
        if why:
            raise OSError(f"backend='io_uring' cannot be used: {why}")
    return requested


__all__ = ["BACKENDS", "Backend", "DEFAULT", "check_name", "resolve", "uring_unavailable"]
