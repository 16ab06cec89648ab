"""A Redis-protocol (RESP) server on pygev's per-message API: PING, ECHO, SET, GET, DEL, EXISTS.

    python examples/resp.py --port 6380
    redis-cli -p 6380 set greeting hello && redis-cli -p 6380 get greeting
    redis-benchmark -p 6380 -t ping,set,get -P 16

How it is built (the pattern to copy for any request/reply protocol):

* `RespProtocol.unpacket` takes ONE command out of the connection's buffer and returns
  `(None, [arg, ...])` (a list of bytes): RESP arrays of bulk strings, and inline commands (one line
  of words separated by whitespace, ended by LF; no quoting).  `packet()` encodes a reply value:
  bytes -> bulk string, str -> simple string, `Error` -> error, int -> integer, `NIL` -> null bulk,
  list -> array.
* `RespHandler.on_message` runs the command and returns the reply value; pygev writes every reply
  produced in one loop turn with one sendmsg, however deep the client pipelines.

Hostile input costs linear time and bounded memory:

* Parsing is linear.  A command is parsed once: a "$<n>" header is read (from a short peek) and
  consumed, then the parser waits - checking only `len(buffer)` - until the buffer holds the n bytes
  and their CRLF, and takes them with one copy.  Arguments already parsed live in
  `conn.protocol_state`, so nothing is rescanned when a command arrives in many reads (an inline
  line remembers how far it was searched).  A 30 MB SET costs a length check per read, then one copy.
* Limits (constructor arguments): `max_bulk_length` 64 MiB (Redis allows 512 MB; smaller here
  because one connection may hold that much), `max_array_length` 1M arguments,
  `max_command_length` 128 MiB for all arguments of one command, `max_inline_length` 64 KiB
  (Redis' PROTO_INLINE_MAX_SIZE), 32 bytes for a "*<n>" / "$<n>" header line, digits only.
  Breaking one sends "-ERR Protocol error: ..." and raises `ProtocolError`: the server logs a
  WARNING and closes the connection after that reply is flushed.
* Replies are bounded too.  N pipelined GETs of a 1 MiB value would otherwise build N MiB of
  replies inside one loop turn, before the server's write backpressure can act.  The handler keeps
  a per-connection budget: while more than `reply_limit` (4 MiB) bytes are queued for the
  connection (`conn.pending_write`), further commands are parked unanswered, in order, reading
  is paused (`conn.pause_reading()`: what was already read is all that can be parked), and a timer
  on the connection's loop (`conn.loop.run_after`) answers them as the output drains, then resumes
  reading.  The timer polls because pygev has no "output drained" hook, and a client that sent
  everything and now only reads would otherwise never get its remaining replies.  The budget is
  checked against `conn.pending_write` only once it is spent (measuring that walks this turn's
  queued replies).  A client that half-closes while commands are parked still gets their
  replies (`on_eof` keeps the connection open until they are sent).

Two variants, selected by `--batch`:

* default, per message: the loop calls unpacket / on_message / packet once per command.
* `--batch`: `BatchRespProtocol.unpacket` returns every complete command buffered (up to
  `max_batch`) as one message; on_message answers them all and returns a `Batch` of replies that
  `packet()` joins into one bytes object.  Same parser, same limits, same reply budget; it only
  amortises the per-message calls (and splits a run of short commands on CRLF in one go).

  Why both: on deep pipelines the per-message path is 2-2.7x slower than the old hand-parsed
  version of this file (which split each read on CRLF and parsed it all in one on_message, but
  re-parsed the whole pending buffer on every read: a 30 MB SET took 13 s of blocked loop and
  1000 pipelined GETs of a 1 MiB value grew it to 1.2 GB).  What costs is not RESP but the Python
  calls per message: unpacket, on_message, packet and queueing each reply, plus the buffer-API
  calls inside unpacket, add up to ~2 us a command; the batch pays them once per read.

    redis-benchmark -t ping,set,get -P 16 -n 200000 -q (50 clients), server pinned to core 0,
    client to core 1, on a 2-core machine shared with other work: noisy, +-25% between runs.
    Thousands of requests per second, median of 4 runs (reactor at commit 376638c):

                    per message    --batch    old hand-parsed
        PING_INLINE      467          762          909
        PING_MBULK       383          729          993
        SET              309          614          797
        GET              290          537          780

  Without pipelining (-P 1) all three are the same, 80-110 thousand per second: one command per
  read, the round trip dominates.  A 30 MB SET now takes 0.08 s; 1000 pipelined 1 MiB GETs from a
  client that reads slowly keep the server at 29 MiB RSS (old version: 1223 MiB).
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import deque
from typing import Any

from reactor import Connection, ConnectionClosed, Handler, Protocol, ProtocolError, Server

log = logging.getLogger("reactor.examples.resp")

CRLF = b"\r\n"
HEADER_MAX = 32  # longest "*<count>" / "$<length>" line accepted, CRLF included
FAST_PEEK = 1024  # the fast path looks at most this far into the buffer for one command
BATCH_PEEK = 64 << 10  # ... and the batch fast path this far for a run of commands
_ARRAY_COUNT = {b"*%d" % n: n for n in range(1, 65)}  # the headers the fast path recognises
_BULK_HEADER = {n: b"$%d" % n for n in range(FAST_PEEK)}.get  # length -> its "$<length>" header
_find_lf = re.compile(b"\n").search


# -- reply values ---------------------------------------------------------------------------------
class Error(str):
    """An error reply: `Error("ERR something")` is sent as "-ERR something"."""


class _Nil:
    def __repr__(self) -> str:
        return "NIL"


NIL = _Nil()  # the null bulk string ("$-1"), what GET of a missing key returns (None means no reply)


class Batch(list):
    """Replies to a batch of commands (BatchRespProtocol), sent back to back in one write."""


BATCH = object()  # the ctx BatchRespProtocol hands to on_message with a list of commands

_SIMPLE = {"OK": b"+OK\r\n", "PONG": b"+PONG\r\n"}


def _line(text: str) -> bytes:
    """A simple-string / error payload: CR and LF would end the reply early."""
    return text.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ")


def encode(reply: Any) -> bytes:
    """The RESP encoding of one reply value (see the module docstring for the types)."""
    t = type(reply)
    if t is bytes or t is bytearray or t is memoryview:
        return b"$%d\r\n%s\r\n" % (len(reply) if t is not memoryview else reply.nbytes, reply)
    if t is str:
        return _SIMPLE.get(reply) or b"+%s\r\n" % _line(reply)
    if t is Error:
        return b"-%s\r\n" % _line(reply)
    if t is int:
        return b":%d\r\n" % reply
    if reply is NIL:
        return b"$-1\r\n"
    if t is list or t is tuple:
        return b"".join([b"*%d\r\n" % len(reply), *map(encode, reply)])
    raise TypeError(f"cannot encode {t.__name__} as a RESP reply")


# -- the protocol: one command out of the buffer ---------------------------------------------------
class _ParseState:
    """Progress through a command that has not fully arrived (kept in conn.protocol_state)."""

    __slots__ = ("args", "left", "bulk", "size", "scan", "error")

    def __init__(self) -> None:
        self.args: list[bytes] | None = None  # None: at the start of a command
        self.left = 0  # bulk strings still to come
        self.bulk = -1  # -1: a "$<n>" header is next; else the body length being waited for
        self.size = 0  # input bytes of this command so far (against max_command_length)
        self.scan = 0  # bytes of an inline line searched for its LF already
        self.error: ProtocolError | None = None  # found by the batch parser, raised next call


class RespProtocol(Protocol):
    """RESP framing: unpacket -> (None, [arg, ...]) per command; packet encodes a reply value."""

    def __init__(self, max_bulk_length: int = 64 << 20, max_array_length: int = 1 << 20,
                 max_command_length: int = 128 << 20, max_inline_length: int = 64 << 10) -> None:
        self.max_bulk_length = max_bulk_length
        self.max_array_length = max_array_length
        self.max_command_length = max_command_length
        self.max_inline_length = max_inline_length
        # what the server may buffer unparsed: one partial bulk string (or inline line) and a read
        self.max_pending = max(max_bulk_length + 2, max_inline_length) + (1 << 16) + HEADER_MAX

    def unpacket(self, conn: Connection, buffer: Any) -> tuple[Any, Any] | None:
        """The next complete command as (None, [arg, ...]), or None until it has arrived."""
        try:
            args = self.next_command(conn, buffer)
        except ProtocolError as exc:
            try:  # answer like Redis; the server closes once this is written
                conn.send(Error(f"ERR Protocol error: {exc}"))
            except ConnectionClosed:
                pass
            raise
        return None if args is None else (None, args)

    def next_command(self, conn: Connection, buffer: Any) -> list[bytes] | None:
        """Take the next complete command out of `buffer`: its arguments, or None to wait."""
        while True:
            if conn.protocol_state is None:  # at a command boundary: try the fast path
                if not len(buffer):
                    return None
                # One short copy, split on CRLF: each "$<n>" must be followed by exactly n bytes
                # and CRLF.  Anything else (a bulk holding CRLF, a long value, a partial command)
                # is left to the exact parser below.
                chunk = bytes(buffer.peek(FAST_PEEK))
                if chunk[0] == 42:  # "*"
                    eol = chunk.find(CRLF, 0, HEADER_MAX)
                    count = _ARRAY_COUNT.get(chunk[:eol]) if eol > 0 else None
                    if count:
                        parts = chunk.split(CRLF, 2 * count + 1)
                        if len(parts) == 2 * count + 2:
                            args = parts[2:-1:2]
                            if list(map(_BULK_HEADER, map(len, args))) == parts[1:-1:2]:
                                buffer.retrieve(len(chunk) - len(parts[-1]))
                                return args
                else:  # an inline command
                    eol = chunk.find(b"\n")
                    if 0 <= eol <= self.max_inline_length:
                        buffer.retrieve(eol + 1)
                        args = chunk[:eol].split()
                        if args:
                            return args
                        continue  # an empty line is ignored, as Redis does
            args = self._parse(conn, buffer)
            if args is None or args:
                return args

    def _parse(self, conn: Connection, buffer: Any) -> list[bytes] | None:
        """The exact, resumable parser: a command, [] for an empty one, None to wait for more."""
        st = conn.protocol_state
        if st is None:
            st = conn.protocol_state = _ParseState()
        if st.error is not None:
            raise st.error
        if st.args is None:  # a new command
            if not len(buffer):
                conn.protocol_state = None
                return None
            if buffer.peek(1)[0] != 42:
                return self._inline(conn, buffer, st)
            line = self._header(buffer, "mbulk count")
            if line is None:
                return None
            count = self._number(line[1:], self.max_array_length, "multibulk length")
            if not count:
                conn.protocol_state = None
                return []
            st.args, st.left, st.bulk, st.size = [], count, -1, len(line) + 2
        args = st.args
        while True:
            if st.bulk < 0:
                line = self._header(buffer, "bulk count")
                if line is None:
                    return None
                if line[:1] != b"$":
                    raise ProtocolError(f"expected '$', got {line[:1].decode('latin-1')!r}")
                size = self._number(line[1:], self.max_bulk_length, "bulk length")
                st.size += len(line) + size + 4
                if st.size > self.max_command_length:
                    raise ProtocolError(f"command longer than {self.max_command_length} bytes")
                st.bulk = size
            need = st.bulk + 2
            if len(buffer) < need:
                return None  # the only work per read while a big value arrives
            body = buffer.peek(need)
            if body[-2:] != CRLF:
                raise ProtocolError("bulk string not followed by CRLF")
            args.append(bytes(body[:-2]))
            buffer.retrieve(need)
            st.bulk = -1
            st.left -= 1
            if not st.left:
                conn.protocol_state = None
                return args

    def _inline(self, conn: Connection, buffer: Any, st: _ParseState) -> list[bytes] | None:
        view = buffer.peek(self.max_inline_length + 1)
        found = _find_lf(view, st.scan)  # from where the last call stopped: linear
        if found is None:
            if len(view) > self.max_inline_length:
                raise ProtocolError("too big inline request")
            st.scan = len(view)
            return None
        eol = found.start()
        line = bytes(view[:eol])
        buffer.retrieve(eol + 1)
        conn.protocol_state = None
        return line.split()

    @staticmethod
    def _header(buffer: Any, what: str) -> bytes | None:
        """A "*<n>" / "$<n>" line without its CRLF (consumed), or None when not complete."""
        head = bytes(buffer.peek(HEADER_MAX))
        eol = head.find(CRLF)
        if eol < 0:
            if len(head) >= HEADER_MAX:
                raise ProtocolError(f"too big {what} string")
            return None
        buffer.retrieve(eol + 2)
        return head[:eol]

    @staticmethod
    def _number(text: bytes, limit: int, what: str) -> int:
        if not text.isdigit() or (text[0] == 48 and len(text) > 1) or len(text) > 18:
            raise ProtocolError(f"invalid {what}")
        value = int(text)
        if value > limit:
            raise ProtocolError(f"invalid {what}: {value} is over the limit of {limit}")
        return value

    def packet(self, conn: Connection, data: Any) -> bytes:
        """Encode a reply value (or a Batch of them) as RESP."""
        t = type(data)
        if t is bytes:
            return b"$%d\r\n%s\r\n" % (len(data), data)
        if t is Batch:
            out = []
            append = out.append
            simple = _SIMPLE.get
            for reply in data:
                t = type(reply)
                if t is bytes:
                    append(b"$%d\r\n%s\r\n" % (len(reply), reply))
                else:
                    append((t is str and simple(reply)) or encode(reply))
            return b"".join(out)
        return encode(data)


class BatchRespProtocol(RespProtocol):
    """RespProtocol handing over every complete command buffered (up to `max_batch`) as one
    message: (BATCH, [[arg, ...], ...]).  A protocol error found after some complete commands is
    raised at the next call, so those commands are answered first."""

    def __init__(self, max_batch: int = 1024, **limits: Any) -> None:
        super().__init__(**limits)
        self.max_batch = max_batch

    def unpacket(self, conn: Connection, buffer: Any) -> tuple[Any, Any] | None:
        if not len(buffer) and conn.protocol_state is None:
            return None
        commands = self._split_many(conn, buffer) if conn.protocol_state is None else []
        if not commands:
            first = RespProtocol.unpacket(self, conn, buffer)  # an error here is answered and raised
            if first is None:
                return None
            commands.append(first[1])
        append = commands.append
        next_command = self.next_command
        try:  # whatever the fast split left (a long value, a partial command): the exact parser
            while len(commands) < self.max_batch:
                args = next_command(conn, buffer)
                if args is None:
                    break
                append(args)
        except ProtocolError as exc:  # answer the commands before it first
            st = conn.protocol_state = conn.protocol_state or _ParseState()
            st.error = exc
        return BATCH, commands

    def _split_many(self, conn: Connection, buffer: Any) -> list[list[bytes]]:
        """The fast path for a run of short commands: split up to BATCH_PEEK buffered bytes on
        CRLF once and read commands off the lines while each "$<n>" matches its line exactly;
        stop at the first line that does not (the exact parser decides about it)."""
        data = bytes(buffer.peek(BATCH_PEEK))
        lines = data.split(CRLF)
        last = len(lines) - 1  # lines[last] is the unterminated rest
        commands: list[list[bytes]] = []
        append = commands.append
        limit = self.max_batch
        inline_max = self.max_inline_length
        bulk_header = _BULK_HEADER
        i = 0
        while i < last and len(commands) < limit:
            line = lines[i]
            count = _ARRAY_COUNT.get(line)
            if count is not None:  # "*<count>", then <count> pairs of "$<length>", <bytes>
                stop = i + 2 * count
                if stop >= last:
                    break
                for j in range(i + 1, stop, 2):
                    if lines[j] != bulk_header(len(lines[j + 1])):
                        break
                else:
                    append(lines[i + 2 : stop + 1 : 2])
                    i = stop + 1
                    continue
                break
            if line[:1] == b"*" or b"\n" in line or len(line) > inline_max:
                break
            i += 1  # an inline command ended by CRLF
            args = line.split()
            if args:
                append(args)
        if i:
            buffer.retrieve(sum(map(len, lines[:i])) + 2 * i)
        return commands


# -- the handler: the commands, and the per-connection reply budget --------------------------------
class _Flow:
    """Per-connection reply accounting (conn.context)."""

    __slots__ = ("budget", "parked", "eof")

    def __init__(self, budget: int) -> None:
        self.budget = budget  # reply bytes we may still produce; never more than the real headroom
        self.parked: deque[list[bytes]] | None = None  # commands waiting for the output to drain
        self.eof = False  # the peer half-closed while commands were parked


def _cost(reply: Any) -> int:
    """What a reply adds to pending_write, near enough (the header and small replies as 16)."""
    return len(reply) + 16 if type(reply) is bytes else 16


RESUME_POLL = 0.002  # seconds between checks of a connection whose replies are held back


class RespHandler(Handler):
    """The command set; `store` is the key space, shared by every connection of this server.

    `reply_limit`: while more than this many bytes are queued for a connection, its further
    commands wait (in order, with reading paused) instead of building more replies.
    """

    def __init__(self, reply_limit: int = 4 << 20) -> None:
        self.store: dict[bytes, bytes] = {}
        self.reply_limit = reply_limit
        self.commands = {b"GET": self.get, b"SET": self.set, b"PING": self.ping, b"ECHO": self.echo,
                         b"DEL": self.delete, b"EXISTS": self.exists}

    # -- commands: each takes the argument list (name first) and returns a reply value ----------
    def get(self, args: list[bytes]) -> Any:
        if len(args) != 2:
            return _arity(args)
        value = self.store.get(args[1])
        return NIL if value is None else value

    def set(self, args: list[bytes]) -> Any:
        if len(args) != 3:
            return _arity(args) if len(args) < 3 else Error("ERR syntax error")
        self.store[args[1]] = args[2]
        return "OK"

    def ping(self, args: list[bytes]) -> Any:
        if len(args) > 2:
            return _arity(args)
        return "PONG" if len(args) == 1 else args[1]

    def echo(self, args: list[bytes]) -> Any:
        return args[1] if len(args) == 2 else _arity(args)

    def delete(self, args: list[bytes]) -> Any:
        if len(args) < 2:
            return _arity(args)
        pop = self.store.pop
        return sum(pop(key, None) is not None for key in args[1:])

    def exists(self, args: list[bytes]) -> Any:
        if len(args) < 2:
            return _arity(args)
        store = self.store
        return sum(key in store for key in args[1:])

    def execute(self, args: list[bytes]) -> Any:
        """Run one command and return its reply value."""
        command = self.commands.get(args[0]) or self.commands.get(args[0].upper())
        if command is None:
            return Error(f"ERR unknown command '{args[0][:128].decode('utf-8', 'replace')}'")
        return command(args)

    # -- callbacks -------------------------------------------------------------------------------
    def on_connect(self, conn: Connection) -> None:
        conn.context = _Flow(self.reply_limit)

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        flow = conn.context
        if ctx is BATCH:
            return self._run_batch(conn, flow, data)
        if flow.parked is None and (flow.budget > 0 or self._refill(conn, flow)):
            command = self.commands.get(data[0])  # the common case inline, then execute()
            reply = command(data) if command is not None else self.execute(data)
            flow.budget -= len(reply) + 16 if type(reply) is bytes else 16
            return reply
        self._park(conn, flow, (data,))
        return None

    def _run_batch(self, conn: Connection, flow: _Flow, commands: list[list[bytes]]) -> Any:
        if flow.parked is not None:
            self._park(conn, flow, commands)
            return None
        replies = Batch()
        append = replies.append
        lookup = self.commands.get
        execute = self.execute
        budget = flow.budget
        spent = 0  # bytes of this batch's replies: not queued (so not in pending_write) yet
        for i, args in enumerate(commands):
            if budget <= 0:
                budget = self.reply_limit - conn.pending_write - spent
                if budget <= 0:
                    flow.budget = budget
                    self._park(conn, flow, commands[i:])
                    return replies or None
            command = lookup(args[0])
            reply = command(args) if command is not None else execute(args)
            cost = len(reply) + 16 if type(reply) is bytes else 16
            budget -= cost
            spent += cost
            append(reply)
        flow.budget = budget
        return replies

    # -- holding replies back while the connection's output is over reply_limit ------------------
    def _refill(self, conn: Connection, flow: _Flow) -> bool:
        """The budget is spent: measure what is really queued (rarely: once per reply_limit bytes)."""
        flow.budget = self.reply_limit - conn.pending_write
        return flow.budget > 0

    def _park(self, conn: Connection, flow: _Flow, commands: Any) -> None:
        if flow.parked is None:
            flow.parked = deque()
            conn.pause_reading()  # what is buffered still arrives here; the rest waits in the kernel
            conn.loop.run_after(0, self._resume, conn, flow)  # next turn, after this one's write
        flow.parked.extend(commands)

    def _resume(self, conn: Connection, flow: _Flow) -> None:
        """Timer on the connection's loop: answer parked commands while the output allows."""
        parked = flow.parked
        if parked is None or not conn.connected:
            flow.parked = None
            return
        try:
            budget = self.reply_limit - conn.pending_write
            while parked and budget > 0:
                reply = self.execute(parked.popleft())
                budget -= _cost(reply)
                conn.send(reply)
            flow.budget = budget
        except ConnectionClosed:
            flow.parked = None
            return
        except Exception as exc:
            log.exception("answering parked commands on %r failed, closing it", conn)
            flow.parked = None
            conn.close(exc)
            return
        if parked:
            conn.loop.run_after(RESUME_POLL, self._resume, conn, flow)
            return
        flow.parked = None
        if flow.eof:
            conn.close()  # after the replies are flushed
        else:
            conn.resume_reading()

    def on_eof(self, conn: Connection) -> bool | None:
        """The client half-closed: stay open for the replies still parked, then close."""
        flow = conn.context
        if flow is not None and flow.parked is not None:
            flow.eof = True
            return True
        return None


def _arity(args: list[bytes]) -> Error:
    name = args[0][:64].decode("utf-8", "replace").lower()
    return Error(f"ERR wrong number of arguments for '{name}' command")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6380)
    parser.add_argument("--loops", type=int, default=1, help="event loops (threads); the key space is shared")
    parser.add_argument("--batch", action="store_true",
                        help="hand over all buffered commands as one message (faster on deep pipelines)")
    parser.add_argument("--max-bulk", type=int, default=64 << 20, help="largest bulk string accepted (bytes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limits = {"max_bulk_length": args.max_bulk, "max_command_length": 2 * args.max_bulk}
    protocol = BatchRespProtocol(**limits) if args.batch else RespProtocol(**limits)
    server = Server(RespHandler(), address=f"{args.host}:{args.port}", num_loops=args.loops,
                    protocol=protocol)
    server.start()


if __name__ == "__main__":
    main()
