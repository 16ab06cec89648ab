"""A Redis-protocol (RESP) server on pygev: PING, ECHO, SET, GET over RESP arrays and inline commands.

    python examples/resp.py --port 6380
    redis-cli -p 6380 set greeting hello && redis-cli -p 6380 get greeting
    redis-benchmark -p 6380 -t ping,set,get -P 16

It uses the DefaultProtocol: on_message gets everything one read brought in, parses every complete
command in it, and returns all the replies joined into one bytes object (one write per read, however
deep the client pipelines).  A command cut in two by the network waits in `conn.context`.

Parsing is fast because of one observation: RESP is a sequence of CRLF-terminated lines, except that
a bulk string may itself contain CRLF.  So the buffer is split on CRLF once (in C) and the commands
are read off the resulting list; every bulk string is checked against its declared length, and the
first one that does not match (it held a CRLF, or it is very long) sends the rest of the buffer to
an exact, byte-by-byte parser.  Both paths give the same answers.
"""

from __future__ import annotations

import argparse
import logging

from reactor import Connection, Handler, Server

CRLF = b"\r\n"
MAX_PENDING = 64 << 20  # an incomplete command may not hold more than this (then: error, close)
MAX_BULK = 512 << 20  # Redis' proto-max-bulk-len
MAX_ARGS = 1 << 20
# Header lines the fast path recognises with one dict lookup: "*1".."*64" and "$0".."$4095"
ARRAY_HEADER = {b"*%d" % n: n for n in range(1, 65)}
BULK_HEADER = {n: b"$%d" % n for n in range(4096)}

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NIL = b"$-1\r\n"


class RespError(ValueError):
    """The client broke the protocol: answer with an error and close the connection."""


def bulk(value: bytes) -> bytes:
    """A RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def parse_exact(data: bytes, pos: int) -> tuple[list[list[bytes]], int]:
    """Parse complete commands from data[pos:] byte by byte: (commands, position after the last one).

    The slow path: used for what the fast path cannot prove it read right (bulk strings holding
    CRLF or longer than the header table, inline commands ended by a bare LF).
    """
    commands: list[list[bytes]] = []
    end = len(data)
    while pos < end:
        if data[pos] != 0x2A:  # not "*": an inline command, ended by LF (a CR before it is dropped)
            eol = data.find(b"\n", pos)
            if eol < 0:
                break
            args = data[pos:eol].split()
            pos = eol + 1
            if args:
                commands.append(args)
            continue
        eol = data.find(CRLF, pos)
        if eol < 0:
            break
        count = _number(data[pos + 1 : eol], MAX_ARGS, "multibulk length")
        cur = eol + 2
        args = []
        for _ in range(count):
            eol = data.find(CRLF, cur)
            if eol < 0:
                break
            if data[cur] != 0x24:  # "$"
                raise RespError(f"expected '$', got {chr(data[cur])!r}")
            size = _number(data[cur + 1 : eol], MAX_BULK, "bulk length")
            stop = eol + 2 + size
            if stop + 2 > end:
                break
            if data[stop : stop + 2] != CRLF:
                raise RespError("bulk string not followed by CRLF")
            args.append(data[eol + 2 : stop])
            cur = stop + 2
        if len(args) < count:
            break  # the command is not complete yet
        pos = cur
        if args:
            commands.append(args)
    return commands, pos


def _number(text: bytes, limit: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise RespError(f"invalid {what}") from None
    if not -1 <= value <= limit:
        raise RespError(f"invalid {what}")
    return value


class Resp(Handler):
    """The command set; `store` is the key space, shared by every connection of this server."""

    def __init__(self) -> None:
        self.store: dict[bytes, bytes] = {}

    def execute(self, args: list[bytes]) -> bytes:
        """Run one command (a list of its words) and return its RESP reply."""
        name = args[0].upper()
        n = len(args)
        if name == b"GET":
            if n == 2:
                value = self.store.get(args[1])
                return NIL if value is None else b"$%d\r\n%s\r\n" % (len(value), value)
        elif name == b"SET":
            if n == 3:
                self.store[args[1]] = args[2]
                return OK
        elif name == b"PING":
            if n <= 2:
                return PONG if n == 1 else bulk(args[1])
        elif name == b"ECHO":
            if n == 2:
                return bulk(args[1])
        else:
            return b"-ERR unknown command '%s'\r\n" % args[0][:128].replace(b"\r", b" ").replace(b"\n", b" ")
        return b"-ERR wrong number of arguments for '%s' command\r\n" % name.lower()

    def on_message(self, conn: Connection, ctx: object, data: memoryview) -> bytes | None:
        pending = conn.context
        buf = pending + data if pending else bytes(data)
        try:
            replies, used = self.run_buffer(buf)
        except RespError as exc:
            conn.send(b"-ERR Protocol error: %s\r\n" % str(exc).encode())
            conn.close()
            return None
        if used < len(buf):
            if len(buf) - used > MAX_PENDING:
                conn.send(b"-ERR Protocol error: command too large\r\n")
                conn.close()
                return None
            conn.context = buf[used:]
        elif pending:
            conn.context = None
        return b"".join(replies) if replies else None

    def run_buffer(self, data: bytes) -> tuple[list[bytes], int]:
        """Execute every complete command in `data`: (replies, bytes consumed)."""
        execute = self.execute
        store = self.store
        array_count = ARRAY_HEADER.get
        bulk_header = BULK_HEADER.get
        lines = data.split(CRLF)
        last = len(lines) - 1  # lines[last] is the unterminated rest (b"" when data ends in CRLF)
        replies: list[bytes] = []
        append = replies.append
        i = 0
        while i < last:
            line = lines[i]
            count = array_count(line)
            if count is not None:  # "*<count>" then <count> pairs of "$<length>", <bytes>
                stop = i + 1 + 2 * count
                if stop > last:
                    break  # not complete yet
                # Each "$<length>" must match its string; a string that held CRLF (or is over 4 KiB)
                # does not, and the exact parser takes over from this command.
                for j in range(i + 1, stop, 2):
                    if lines[j] != bulk_header(len(lines[j + 1])):
                        break
                else:
                    j = stop
                if j != stop:
                    break
                args = lines[i + 2 : stop + 1 : 2]
                i = stop
            elif line[:1] == b"*" or b"\n" in line:
                break  # an unusual array header, or lines ended by a bare LF: the exact parser decides
            else:  # an inline command
                i += 1
                args = line.split()
                if not args:
                    continue
            # the hottest commands inline, everything else through execute()
            name = args[0]
            n = len(args)
            if name == b"GET" and n == 2:
                value = store.get(args[1])
                append(NIL if value is None else b"$%d\r\n%s\r\n" % (len(value), value))
            elif name == b"SET" and n == 3:
                store[args[1]] = args[2]
                append(OK)
            elif name == b"PING" and n == 1:
                append(PONG)
            else:
                append(execute(args))
        if i == last and not lines[last]:
            return replies, len(data)
        # Stopped early: find the byte offset of line i, then the exact parser takes over from there.
        offset = sum(map(len, lines[:i])) + 2 * i
        commands, used = parse_exact(data, offset)
        replies.extend(execute(args) for args in commands)
        return replies, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6380)
    parser.add_argument("--loops", type=int, default=1, help="event loops (threads); the key space is shared")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = Server(Resp(), address=f"{args.host}:{args.port}", num_loops=args.loops)
    server.start()


if __name__ == "__main__":
    main()
