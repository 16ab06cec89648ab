"""Line GET peer on asyncio.Protocol (asyncio or uvloop): the service of examples/line_get.py.

Request `GET <key>\\n`, reply the key's 37-byte value and `\\n` (`NOT_FOUND\\n` for an unknown key,
`BAD_REQUEST\\n` for a line that is not a GET).  Written the way a careful asyncio developer writes it:
each `data_received` splits its bytes with `bytes.split(b"\\n")` (in C) and keeps the trailing partial
line for the next read, makes one Python call per request line, and sends all replies of the read
joined into ONE `transport.write`.  The reply lines, newline included, are built once at start-up.
"""

from __future__ import annotations

import asyncio

from common import parse_args, serve_protocol

MAX_LINE = 65536  # a partial line longer than this closes the connection (LineProtocol's default)
# the same store as examples/line_get.py: key0042 -> b"value-0042-abcdefghijklmnopqrstuvwxyz"
STORE = {b"key%04d" % i: b"value-%04d-abcdefghijklmnopqrstuvwxyz" % i for i in range(1000)}
REPLY_LINES = {key: value + b"\n" for key, value in STORE.items()}
NOT_FOUND = b"NOT_FOUND\n"
BAD_REQUEST = b"BAD_REQUEST\n"


def handle(line: bytes) -> bytes:
    """The application: one request line (without its newline) -> one reply line."""
    if line[:4] == b"GET ":
        return REPLY_LINES.get(line[4:], NOT_FOUND)
    return BAD_REQUEST


class LineGet(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pending = b""  # a line not yet ended, carried over to the next read

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        lines = data.split(b"\n")
        self.pending = lines.pop()  # b"" when the read ended with a newline
        if lines:
            self.transport.write(b"".join([handle(line) for line in lines]))  # type: ignore[attr-defined]
        if len(self.pending) > MAX_LINE:
            self.transport.close()


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    serve_protocol(LineGet, args.port, args.loop)
