"""Raw sockaddr bytes (as the native glue keeps them: accept()'s peer per fd, a UDP peer's
table key) decoded to the address socket.getpeername() would return."""
from __future__ import annotations

import socket
import sys
from typing import Any


def decode_sockaddr(raw: bytes) -> Any:
    """A sockaddr as socket.getpeername() would return it (None for an unknown family)."""
    family = int.from_bytes(raw[0:2], sys.byteorder)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6:
        return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big"),
                int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], sys.byteorder))
    if family == socket.AF_UNIX:
        return raw[2:].split(b"\0", 1)[0].decode(errors="surrogateescape")
    return None


__all__ = ["decode_sockaddr"]
