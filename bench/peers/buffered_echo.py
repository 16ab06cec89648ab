"""asyncio.BufferedProtocol echo peer (asyncio or uvloop): raw echo, or length-framed echo.

The loop reads straight into our buffer.  Raw echo writes a copy of what arrived (the transport may
keep what it is given) and so can share one receive buffer between all connections.  Framed echo
accumulates in one bytearray per connection, parses frames in place with `struct.unpack_from`, and
joins all replies of one read into ONE write.
"""

from __future__ import annotations

import asyncio
import struct

from common import parse_args, serve_protocol

READ_SIZE = 65536
HEADER = struct.Struct(">I")


SHARED = bytearray(READ_SIZE)  # raw echo copies every read out at once, so all connections share one buffer
SHARED_VIEW = memoryview(SHARED)


class RawEcho(asyncio.BufferedProtocol):
    """Echoes each read from the shared receive buffer."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.write = transport.write  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return SHARED_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.write(SHARED[:nbytes])  # bytearray slice: a copy the transport may keep


class FramedEcho(asyncio.BufferedProtocol):
    """Frames accumulate in `buf[:end]`; complete ones are answered, the tail moves to the front."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = bytearray(READ_SIZE)
        self.view = memoryview(self.buf)
        self.end = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.end == len(self.buf):  # a frame larger than the buffer: grow it
            bigger = bytearray(2 * len(self.buf))
            bigger[: self.end] = self.buf
            self.buf, self.view = bigger, memoryview(bigger)
        return self.view[self.end :]

    def handle(self, payload: bytearray) -> bytearray:
        """The application: echo."""
        return payload

    def buffer_updated(self, nbytes: int) -> None:
        buf = self.buf
        end = self.end + nbytes
        pos = 0
        out: list[bytes | bytearray] = []
        handle = self.handle
        unpack_from = HEADER.unpack_from
        while end - pos >= 4:
            stop = pos + 4 + unpack_from(buf, pos)[0]
            if stop > end:
                break
            reply = handle(buf[pos + 4 : stop])
            out.append(HEADER.pack(len(reply)))
            out.append(reply)
            pos = stop
        if pos:
            self.view[: end - pos] = self.view[pos:end]
        self.end = end - pos
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0], framed=True)
    serve_protocol(FramedEcho if args.framed else RawEcho, args.port, args.loop)
