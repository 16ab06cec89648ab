"""A raw WebSocket client for tests that must send what real clients never would: the upgrade
request by hand, masked or unmasked frames with any header bits, and a frame reader."""
from __future__ import annotations

import base64
import os
import socket
from typing import Any

from support import connect, recv_exactly

KEY = base64.b64encode(b"0123456789abcdef").decode()
ACCEPT = "BACScCJPNqyz+UBoqMH89VmURoA="     # base64(SHA-1(KEY + RFC 6455 GUID))


def upgrade_request(path: str = "/", headers: dict[str, str] | None = None,
                    drop: tuple[str, ...] = ()) -> bytes:
    """A client upgrade request; `headers` add or replace, `drop` removes (by name)."""
    fields = {"Host": "localhost", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13"}
    fields.update(headers or {})
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items() if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_head(sock: socket.socket, limit: int = 65536) -> bytes:
    """The HTTP response head (up to the blank line), read byte by byte so nothing after it is lost."""
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        head += recv_exactly(sock, 1)
        assert len(head) < limit
    return bytes(head)


def open_ws(address: Any, **kwargs: Any) -> tuple[socket.socket, bytes]:
    """Connect and upgrade; returns the socket and the 101 response head."""
    sock = connect(address)
    sock.sendall(upgrade_request(**kwargs))
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock, head


def frame(payload: bytes | str, opcode: int = 2, fin: bool = True, rsv: int = 0, mask: bool = True,
          length: int | None = None) -> bytes:
    """A client frame; `length` overrides the encoded length (with the minimal encoding for it)."""
    data = payload.encode() if isinstance(payload, str) else payload
    n = len(data) if length is None else length
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = bytes((b0, mbit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, mbit | 127)) + n.to_bytes(8, "big")
    if not mask:
        return head + data
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One server frame: (first byte, payload).  Server frames must not be masked."""
    b0, b1 = recv_exactly(sock, 2)
    assert not b1 & 0x80, "server frames must be unmasked"
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(recv_exactly(sock, 2), "big")
    elif n == 127:
        n = int.from_bytes(recv_exactly(sock, 8), "big")
    return b0, recv_exactly(sock, n)


def read_close(sock: socket.socket) -> int | None:
    """Read frames up to the close frame; return its code (None for an empty payload)."""
    while True:
        b0, payload = read_frame(sock)
        if b0 == 0x88:
            return int.from_bytes(payload[:2], "big") if payload else None


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP response with a Content-Length body: (head, body)."""
    head = read_head(sock)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, recv_exactly(sock, length)
