"""A raw WebSocket client for tests that must send what real clients never would: the upgrade
request by hand, masked or unmasked frames with any header bits, and a frame reader."""
from __future__ import annotations

import base64
import os
import socket
import zlib
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
    return head + key + mask_bytes(data, key)


def mask_bytes(data: bytes, key: bytes) -> bytes:
    """XOR with the repeating 4-byte key (one big-int XOR: fast for long payloads)."""
    n = len(data)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


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


# -- permessage-deflate, client side ------------------------------------------------------------
TAIL = b"\x00\x00\xff\xff"


class Deflater:
    """A client's permessage-deflate sender: `bits` window, `reset` = client_no_context_takeover."""

    def __init__(self, bits: int = 15, reset: bool = False, level: int = 6) -> None:
        self.bits = bits
        self.reset = reset
        self.level = level
        self.comp: Any = None

    def payload(self, data: bytes, finish: bool = False) -> bytes:
        """One message compressed, without its trailing empty block (or ended with BFINAL)."""
        if self.comp is None:
            self.comp = zlib.compressobj(self.level, zlib.DEFLATED, -self.bits)
        if finish:                       # a stream ended with BFINAL: the next message starts anew
            out = self.comp.compress(data) + self.comp.flush(zlib.Z_FINISH)
            self.comp = None
            return out
        out = self.comp.compress(data) + self.comp.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(TAIL)
        if self.reset:
            self.comp = None
        return out[:-4]

    def message(self, data: bytes | str, opcode: int | None = None, pieces: int = 1,
                finish: bool = False) -> bytes:
        """The frames of one compressed message: RSV1 on the first, split into `pieces`."""
        raw = data.encode() if isinstance(data, str) else data
        op = opcode if opcode is not None else (1 if isinstance(data, str) else 2)
        body = self.payload(raw, finish)
        step = max(1, -(-len(body) // pieces))
        parts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
        out = []
        for i, part in enumerate(parts):
            out.append(frame(part, opcode=op if i == 0 else 0, fin=i == len(parts) - 1,
                             rsv=4 if i == 0 else 0))
        return b"".join(out)


class Inflater:
    """A client's permessage-deflate receiver: `bits` window, `reset` = server_no_context_takeover."""

    def __init__(self, bits: int = 15, reset: bool = False) -> None:
        self.bits = bits
        self.reset = reset
        self.dec: Any = None

    def message(self, sock: socket.socket) -> tuple[int, bytes]:
        """One whole server message (control frames other than close are skipped): (opcode, bytes)."""
        opcode, compressed, parts = None, False, []
        while True:
            b0, payload = read_frame(sock)
            op = b0 & 0x0F
            if op == 8:
                raise AssertionError(f"close frame {payload!r} instead of a message")
            if op >= 8:
                continue
            if opcode is None:
                opcode, compressed = op, bool(b0 & 0x40)
            else:
                assert op == 0 and not b0 & 0x40
            parts.append(payload)
            if b0 & 0x80:
                break
        data = b"".join(parts)
        if compressed:
            if self.dec is None:
                self.dec = zlib.decompressobj(-self.bits)
            data = self.dec.decompress(data + TAIL)
            if self.reset:
                self.dec = None
        return opcode, data


# -- feeding a protocol directly -----------------------------------------------------------------
class FakeLoop:
    def run_after(self, delay: float, fn: Any, *args: Any) -> Any:
        class Timer:
            def cancel(self) -> None:
                pass
        return Timer()


class FakeConn:
    """Just enough of a Connection to drive a Protocol by hand: what it sends is collected."""

    def __init__(self) -> None:
        self.protocol_state: Any = None
        self.context: Any = None
        self.sent = bytearray()
        self.closed = False
        self.loop = FakeLoop()

    @property
    def connected(self) -> bool:
        return not self.closed

    def send_raw(self, data: Any) -> None:
        self.sent += data

    def close(self, error: Any = None) -> None:
        self.closed = True


def drive(protocol: Any, conn: FakeConn, chunks: list[bytes]) -> tuple[list[Any], BaseException | None]:
    """Feed `chunks` one at a time through a RingBuffer, as the loop does: unpacket until None.
    Returns the messages and the ProtocolError that ended the stream, if any."""
    from ringbuf import RingBuffer
    ring = RingBuffer(1 << 16)
    messages: list[Any] = []
    for chunk in chunks:
        if conn.closed:
            break
        ring.write(chunk)
        while not conn.closed:
            before = len(ring)
            try:
                msg = protocol.unpacket(conn, ring)
            except ValueError as exc:       # ProtocolError
                conn.closed = True
                return messages, exc
            if msg is None:
                break
            assert len(ring) < before, "a message without consuming input"
            messages.append(msg[1])
    return messages, None


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse a server byte stream (after the 101 head) into (first byte, payload) frames."""
    out, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            n, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        out.append((b0, data[pos:pos + n]))
        pos += n
    return out
