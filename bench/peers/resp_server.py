"""RESP (Redis protocol) peer on asyncio.Protocol, uvloop by default: PING, ECHO, SET, GET.

The same command set as examples/resp.py: RESP arrays of bulk strings and inline commands; replies
to every command parsed from one `data_received` leave in ONE `transport.write`.  An incomplete
command waits in a carry-over buffer; a malformed one closes the connection.
"""

from __future__ import annotations

import asyncio

from common import parse_args, serve_protocol

CRLF = b"\r\n"
MAX_BULK = 512 << 20


class ProtocolViolation(ValueError):
    """The client sent something that is not RESP."""


def parse_command(data: bytes, pos: int) -> tuple[list[bytes] | None, int]:
    """Parse one command at `pos`: (args, next_pos), or (None, pos) when it is not complete yet."""
    eol = data.find(CRLF, pos)
    if eol < 0:
        return None, pos
    if data[pos] != 0x2A:  # not "*": an inline command, words separated by spaces
        return data[pos:eol].split(), eol + 2
    count = int(data[pos + 1 : eol])
    pos = eol + 2
    args = []
    for _ in range(count):
        eol = data.find(CRLF, pos)
        if eol < 0:
            return None, pos
        if data[pos] != 0x24:  # "$"
            raise ProtocolViolation("expected a bulk string")
        size = int(data[pos + 1 : eol])
        if not 0 <= size <= MAX_BULK:
            raise ProtocolViolation("bad bulk length")
        start = eol + 2
        stop = start + size
        if stop + 2 > len(data):
            return None, pos
        args.append(data[start:stop])
        pos = stop + 2
    return args, pos


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class RespServer(asyncio.Protocol):
    """One connection; `store` is shared by all of them."""

    store: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pending = b""

    def execute(self, args: list[bytes]) -> bytes:
        name = args[0].upper()
        if name == b"GET" and len(args) == 2:
            value = self.store.get(args[1])
            return b"$-1\r\n" if value is None else bulk(value)
        if name == b"SET" and len(args) == 3:
            self.store[args[1]] = args[2]
            return b"+OK\r\n"
        if name == b"PING" and len(args) <= 2:
            return bulk(args[1]) if len(args) == 2 else b"+PONG\r\n"
        if name == b"ECHO" and len(args) == 2:
            return bulk(args[1])
        if name in (b"GET", b"SET", b"PING", b"ECHO"):
            return b"-ERR wrong number of arguments for '%s' command\r\n" % name.lower()
        return b"-ERR unknown command '%s'\r\n" % args[0][:64]

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        pos = 0
        out = []
        try:
            while pos < len(data):
                args, nxt = parse_command(data, pos)
                if args is None:
                    break
                pos = nxt
                if args:  # an empty inline line is ignored, as Redis does
                    out.append(self.execute(args))
        except (ProtocolViolation, ValueError):
            out.append(b"-ERR Protocol error\r\n")
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]
            self.transport.close()
            return
        self.pending = data[pos:]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    serve_protocol(RespServer, args.port, args.loop)
