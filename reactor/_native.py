"""The one importer of the compiled glue (`reactor._reactor_native`, built from _reactor.c).

Every constant the C side defines is read here by name (see _reactor.h for what each means),
so no number is written on both sides of the boundary.  Other modules import from here.
"""
from __future__ import annotations

import os
from typing import Any

from ._reactor_native import ffi, lib

# poller registration kinds (epoll_data carries kind << 32 | fd)
KIND_CONN, KIND_LISTEN, KIND_WAKE = lib.PG_K_CONN, lib.PG_K_LISTEN, lib.PG_K_WAKE
KIND_UDP = lib.PG_K_UDP

# result rows of pg_poll / pg_split
R_DATA, R_FRAME, R_PARTIAL, R_EOF = lib.PG_R_DATA, lib.PG_R_FRAME, lib.PG_R_PARTIAL, lib.PG_R_EOF
R_ERROR, R_READABLE, R_WRITABLE = lib.PG_R_ERROR, lib.PG_R_READABLE, lib.PG_R_WRITABLE
R_ACCEPT, R_ACCEPT_ERROR, R_WAKE = lib.PG_R_ACCEPT, lib.PG_R_ACCEPT_ERROR, lib.PG_R_WAKE
R_FRAME_ERROR, R_LINES, R_UDP = lib.PG_R_FRAME_ERROR, lib.PG_R_LINES, lib.PG_R_UDP
FRAME_TOO_LONG, FRAME_BAD_LENGTH = lib.PG_FRAME_TOO_LONG, lib.PG_FRAME_BAD_LENGTH

# per-fd flags
F_PYREAD, F_NODELAY, F_DISCARD = lib.PG_F_PYREAD, lib.PG_F_NODELAY, lib.PG_F_DISCARD

# output part kinds of a pg_flush spec
O_ARENA, O_BLOB, O_PTR, O_FRAME = lib.PG_O_ARENA, lib.PG_O_BLOB, lib.PG_O_PTR, lib.PG_O_FRAME

# codec types of pg_codec.type
CODEC_NONE, CODEC_LENGTH = lib.PG_CODEC_NONE, lib.PG_CODEC_LENGTH
CODEC_DELIMITER, CODEC_FIXED = lib.PG_CODEC_DELIMITER, lib.PG_CODEC_FIXED
DELIM_MAX = lib.PG_DELIM_MAX

SOCKADDR_SIZE = lib.pg_sockaddr_size()


def configure_codec(codec: Any, split: dict | None) -> None:
    """Fill a `pg_codec *` from a protocol's NativePlan.split (pg_codec field names)."""
    for key, value in (split or {}).items():
        if key == "delim":
            codec.delim_len = len(value)
            ffi.memmove(codec.delim, bytes(value), len(value))
        else:
            setattr(codec, key, value)


def check(res: int, what: str) -> int:
    """Turn a native -errno result into OSError."""
    if res < 0:
        raise OSError(-res, f"{what}: {os.strerror(-res)}")
    return res


__all__ = ["check", "configure_codec", "ffi", "lib"]
