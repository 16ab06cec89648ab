"""Length-framed RPC peer on asyncio.Protocol (asyncio or uvloop): the service of examples/rpc.py.

Frames are a 4-byte big-endian length + payload.  Request payload: op u32, arg u32 (big-endian);
reply payload: status u32, result u64, a fixed 24-byte tail (op 1: arg + 1, op 2: arg * arg).
Written the way a careful asyncio developer writes it: each `data_received` walks its bytes with
`struct.unpack_from` on the headers, slices each payload and makes one Python call per request, and
sends all replies of the read (each behind its header) joined into ONE `transport.write`; an
incomplete frame waits for the next read.
"""

from __future__ import annotations

import asyncio
import struct

from common import parse_args, serve_protocol

MAX_FRAME = 8 << 20  # LengthFieldProtocol's default max_frame_length
HEADER = struct.Struct(">I")
REQUEST = struct.Struct(">II")  # op, arg
REPLY = struct.Struct(">IQ24s")  # status, result, tail
TAIL = b"pygev-rpc-reply-tail-24b"
OK, UNKNOWN_OP, BAD_REQUEST = 0, 1, 2


def handle(payload: bytes) -> bytes:
    """The application: one request payload -> one reply payload."""
    if len(payload) != REQUEST.size:
        return REPLY.pack(BAD_REQUEST, 0, TAIL)
    op, arg = REQUEST.unpack(payload)
    if op == 1:
        return REPLY.pack(OK, arg + 1, TAIL)
    if op == 2:
        return REPLY.pack(OK, arg * arg, TAIL)
    return REPLY.pack(UNKNOWN_OP, 0, TAIL)


class Rpc(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pending = b""  # an incomplete frame carried over to the next read

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        end = len(data)
        pos = 0
        out = []
        unpack_from = HEADER.unpack_from
        pack = HEADER.pack
        while end - pos >= 4:
            (length,) = unpack_from(data, pos)
            if length > MAX_FRAME:
                self.transport.close()
                return
            stop = pos + 4 + length
            if stop > end:
                break
            reply = handle(data[pos + 4 : stop])
            out.append(pack(len(reply)))
            out.append(reply)
            pos = stop
        self.pending = data[pos:]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    serve_protocol(Rpc, args.port, args.loop)
