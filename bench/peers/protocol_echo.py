"""asyncio.Protocol echo peer (asyncio or uvloop): raw echo, or 4-byte big-endian length-framed echo.

The framed variant is written the way a competent developer writes it: frames are parsed in place
from the received bytes (`int.from_bytes` on the header, slices for the payload), each payload goes
through a handler call, and all replies of one `data_received` leave in ONE `transport.write`.
"""

from __future__ import annotations

import asyncio

from common import parse_args, serve_protocol


class RawEcho(asyncio.Protocol):
    """Writes every chunk back as it arrives."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.write = transport.write  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.write(data)


class FramedEcho(asyncio.Protocol):
    """Splits the stream into length-prefixed frames and echoes each payload in a frame of its own."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pending = b""  # an incomplete frame carried over to the next read

    def handle(self, payload: bytes) -> bytes:
        """The application: echo."""
        return payload

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        end = len(data)
        pos = 0
        out = []
        handle = self.handle
        while end - pos >= 4:
            stop = pos + 4 + int.from_bytes(data[pos : pos + 4], "big")
            if stop > end:
                break
            reply = handle(data[pos + 4 : stop])
            out.append(len(reply).to_bytes(4, "big"))
            out.append(reply)
            pos = stop
        self.pending = data[pos:]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0], framed=True)
    serve_protocol(FramedEcho if args.framed else RawEcho, args.port, args.loop)
