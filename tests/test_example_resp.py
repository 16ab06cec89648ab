"""examples/resp.py: the RESP server on the per-message API (and its --batch variant).

Byte-exact replies, pipelining order, commands cut at every byte, a 4 MB value, the limits
(oversized bulk, garbage, long lines), and the reply budget that holds back replies of a client
that does not read.  Every wait is bounded; nothing asserts on timing.
"""
from __future__ import annotations

import importlib.util
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support import recv_exactly

from reactor import ProtocolError, Server
from ringbuf import RingBuffer

TIMEOUT = 10.0
_PATH = Path(__file__).resolve().parent.parent / "examples" / "resp.py"
_spec = importlib.util.spec_from_file_location("example_resp", _PATH)
assert _spec is not None and _spec.loader is not None
resp: Any = importlib.util.module_from_spec(_spec)
sys.modules["example_resp"] = resp
_spec.loader.exec_module(resp)


def cmd(*args: bytes) -> bytes:
    """A RESP array of bulk strings, as clients send commands."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


PROTOCOLS = {"per_message": resp.RespProtocol, "batch": resp.BatchRespProtocol}


@pytest.fixture(params=sorted(PROTOCOLS))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


def serve(variant: str, handler: Any = None, **limits: Any) -> Server:
    return Server(handler or resp.RespHandler(), address="127.0.0.1:0",
                  protocol=PROTOCOLS[variant](**limits))


def connect(srv: Server, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(TIMEOUT)
    sock.connect(srv.address)
    return sock


def recv_to_eof(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything until the server closes (FIN or reset); bounded in time and size."""
    deadline = time.monotonic() + TIMEOUT
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"not closed within {TIMEOUT}s ({len(buf)} bytes read)"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(buf)
        if not chunk:
            return bytes(buf)
        buf += chunk
        assert len(buf) <= limit, "more data than expected and no close"


def ask(sock: socket.socket, request: bytes, expected: bytes) -> None:
    sock.sendall(request)
    assert recv_exactly(sock, len(expected)) == expected


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# -- replies, byte for byte ---------------------------------------------------------------------
def test_commands_byte_exact(variant: str) -> None:
    with serve(variant) as srv, connect(srv) as sock:
        ask(sock, cmd(b"PING"), b"+PONG\r\n")
        ask(sock, cmd(b"PING", b"hi there"), b"$8\r\nhi there\r\n")
        ask(sock, cmd(b"ECHO", b"a\r\nb"), b"$4\r\na\r\nb\r\n")          # CRLF inside a bulk
        ask(sock, cmd(b"ECHO", b""), b"$0\r\n\r\n")
        ask(sock, cmd(b"GET", b"k"), b"$-1\r\n")
        ask(sock, cmd(b"SET", b"k", b"v1"), b"+OK\r\n")
        ask(sock, cmd(b"GET", b"k"), b"$2\r\nv1\r\n")
        ask(sock, cmd(b"set", b"k", b"v2"), b"+OK\r\n")                    # names: any case
        ask(sock, cmd(b"get", b"k"), b"$2\r\nv2\r\n")
        ask(sock, cmd(b"EXISTS", b"k", b"nope", b"k"), b":2\r\n")
        ask(sock, cmd(b"DEL", b"k", b"nope"), b":1\r\n")
        ask(sock, cmd(b"EXISTS", b"k"), b":0\r\n")
        ask(sock, cmd(b"GET"), b"-ERR wrong number of arguments for 'get' command\r\n")
        ask(sock, cmd(b"SET", b"k", b"v", b"EX", b"1"), b"-ERR syntax error\r\n")
        ask(sock, cmd(b"NOPE\r\n+OK"), b"-ERR unknown command 'NOPE  +OK'\r\n")  # no reply injection
        value = bytes(range(256)) * 8                                        # past the fast path
        ask(sock, cmd(b"SET", b"bin", value), b"+OK\r\n")
        ask(sock, cmd(b"GET", b"bin"), bulk(value))


def test_inline_commands(variant: str) -> None:
    with serve(variant) as srv, connect(srv) as sock:
        ask(sock, b"PING\r\n", b"+PONG\r\n")
        ask(sock, b"PING\n", b"+PONG\r\n")                                   # a bare LF ends it too
        ask(sock, b"\r\n\r\n  \r\nSET  k \t hello\r\n", b"+OK\r\n")          # blank lines ignored
        ask(sock, b"get k\r\n", b"$5\r\nhello\r\n")
        ask(sock, b"ECHO x\r\n" + cmd(b"ECHO", b"y") + b"ECHO z\n", b"$1\r\nx\r\n$1\r\ny\r\n$1\r\nz\r\n")


def test_pipelined_commands_answered_in_order(variant: str) -> None:
    n = 2000
    request = bytearray()
    expected = bytearray()
    for i in range(n):
        key, value = b"k%d" % (i % 7), b"v%d" % i
        request += cmd(b"SET", key, value) + cmd(b"GET", key)
        expected += b"+OK\r\n" + bulk(value)
        if i % 10 == 0:
            request += b"PING\r\n" + cmd(b"ECHO", b"e\r\n%d" % i)
            expected += b"+PONG\r\n" + bulk(b"e\r\n%d" % i)
    with serve(variant) as srv, connect(srv) as sock:
        sock.sendall(request)
        assert recv_exactly(sock, len(expected)) == expected


# -- commands cut anywhere ------------------------------------------------------------------------
class FakeConn:
    """What the protocol and handler touch of a Connection."""

    def __init__(self) -> None:
        self.protocol_state: Any = None
        self.context: Any = None
        self.pending_write = 0
        self.connected = True
        self.sent: list[Any] = []

    def send(self, data: Any) -> None:
        self.sent.append(data)


STREAM = (cmd(b"SET", b"key", b"some\r\nvalue") + b"PING\r\n" + cmd(b"GET", b"key") + b"\n"
          + cmd(b"ECHO", b"x" * 1500) + b"ECHO  inline\n" + cmd(b"PING") + b"*0\r\n"
          + cmd(b"EXISTS", b"key", b"key"))
STREAM_REPLIES = (b"+OK\r\n+PONG\r\n" + bulk(b"some\r\nvalue") + bulk(b"x" * 1500) + bulk(b"inline")
                  + b"+PONG\r\n:2\r\n")


def run_fed(variant: str, pieces: list[bytes]) -> bytes:
    """Feed the pieces one by one through a ring, as the server does with leftovers."""
    protocol = PROTOCOLS[variant]()
    handler = resp.RespHandler()
    conn = FakeConn()
    handler.on_connect(conn)
    ring = RingBuffer(64)
    out = []
    for piece in pieces:
        ring.write(piece)
        while True:
            msg = protocol.unpacket(conn, ring)
            if msg is None:
                break
            reply = handler.on_message(conn, msg[0], msg[1])
            if reply is not None:
                out.append(bytes(protocol.packet(conn, reply)))
    assert not conn.sent
    assert len(ring) == 0 and conn.protocol_state is None
    return b"".join(out)


def test_parser_every_split_position(variant: str) -> None:
    for k in range(1, len(STREAM)):
        assert run_fed(variant, [STREAM[:k], STREAM[k:]]) == STREAM_REPLIES, f"split at {k}"


def test_parser_byte_by_byte(variant: str) -> None:
    assert run_fed(variant, [STREAM[i:i + 1] for i in range(len(STREAM))]) == STREAM_REPLIES


def test_command_split_across_reads_at_every_byte(variant: str) -> None:
    request = cmd(b"SET", b"key", b"val\r\nue") + b"GET key\r\n"
    with serve(variant) as srv, connect(srv) as sock:
        for k in range(1, len(request)):
            sock.sendall(request[:k])
            time.sleep(0.002)  # very likely a read of its own; the test is right either way
            ask(sock, request[k:], b"+OK\r\n" + bulk(b"val\r\nue"))


def test_big_value_set_and_got_back(variant: str) -> None:
    value = bytes(range(251)) * (4_000_000 // 251)
    with serve(variant) as srv, connect(srv) as sock:
        request = cmd(b"SET", b"big", value)
        for i in range(0, len(request), 65536):  # arrives in many reads
            sock.sendall(request[i:i + 65536])
        assert recv_exactly(sock, 5) == b"+OK\r\n"
        ask(sock, cmd(b"GET", b"big"), bulk(value))
        ask(sock, cmd(b"PING"), b"+PONG\r\n")


# -- limits and bad input -------------------------------------------------------------------------
@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.WARNING, logger="reactor")

    def seen(text: str) -> bool:
        return any(r.levelno == logging.WARNING and text in r.getMessage() for r in caplog.records)
    return seen


def test_oversized_bulk_length_is_refused_at_once(variant: str, warnings_seen: Any) -> None:
    with serve(variant, max_bulk_length=1 << 20) as srv, connect(srv) as sock:
        ask(sock, cmd(b"PING"), b"+PONG\r\n")
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % ((1 << 20) + 1))  # no body sent
        assert recv_to_eof(sock).startswith(b"-ERR Protocol error: invalid bulk length")
        wait_for(lambda: warnings_seen("invalid bulk length"), "the WARNING")


@pytest.mark.parametrize("garbage, reason", [
    (b"*2\r\n$4\r\nECHO\r\n#3\r\nabc\r\n", "expected '$'"),
    (b"*x\r\n", "invalid multibulk length"),
    (b"*-1\r\n", "invalid multibulk length"),
    (b"*1\r\n$-1\r\n", "invalid bulk length"),
    (b"*1\r\n$1_0\r\n", "invalid bulk length"),
    (b"*1\r\n$3\r\nabcdef\r\n", "not followed by CRLF"),
    (b"*" + b"1" * 40, "too big mbulk count string"),
    (b"*1\r\n$" + b"9" * 40, "too big bulk count string"),
    (b"*99999999\r\n", "invalid multibulk length"),
])
def test_garbage_closes_with_a_warning(variant: str, warnings_seen: Any, garbage: bytes,
                                       reason: str) -> None:
    with serve(variant, max_array_length=1000) as srv, connect(srv) as sock:
        sock.sendall(cmd(b"PING") + garbage)
        data = recv_to_eof(sock)
        assert data.startswith(b"+PONG\r\n-ERR Protocol error: ")   # earlier commands answered first
        assert reason.encode() in data
        wait_for(lambda: warnings_seen(reason), "the WARNING")


def test_long_inline_line_closes(variant: str, warnings_seen: Any) -> None:
    with serve(variant, max_inline_length=4096) as srv, connect(srv) as sock:
        sock.sendall(b"ECHO " + b"x" * 5000)   # no LF: refused once past the limit, not at the end
        assert b"too big inline request" in recv_to_eof(sock)
        wait_for(lambda: warnings_seen("too big inline request"), "the WARNING")


def test_command_length_is_bounded(variant: str, warnings_seen: Any) -> None:
    with serve(variant, max_bulk_length=1000, max_command_length=5000) as srv, connect(srv) as sock:
        sock.sendall(b"*10\r\n" + (b"$1000\r\n" + b"x" * 1000 + b"\r\n") * 5)
        assert b"command longer than 5000 bytes" in recv_to_eof(sock)
        wait_for(lambda: warnings_seen("command longer"), "the WARNING")


class CountingReader:
    """The part of the buffer API the parser uses, counting the bytes it is shown."""

    def __init__(self, ring: RingBuffer) -> None:
        self.ring = ring
        self.peeked = 0

    def __len__(self) -> int:
        return len(self.ring)

    def write(self, data: bytes) -> None:
        self.ring.write(data)

    def peek(self, n: int) -> Any:
        view = self.ring.peek(n)
        self.peeked += len(view)
        return view

    def retrieve(self, n: int) -> None:
        self.ring.retrieve(n)


def test_linear_parse_of_a_value_arriving_in_small_pieces() -> None:
    """Each piece of a pending bulk costs a length check, not a rescan: count peeks."""
    protocol = resp.RespProtocol()
    conn = FakeConn()
    ring = CountingReader(RingBuffer(64))
    value = b"v" * 2_000_000
    request = cmd(b"SET", b"k", value)
    msgs = []
    for i in range(0, len(request), 1000):
        ring.write(request[i:i + 1000])
        msg = protocol.unpacket(conn, ring)
        if msg is not None:
            msgs.append(msg)
    assert msgs == [(None, [b"SET", b"k", value])]
    assert ring.peeked < 2 * len(request)   # the value is looked at once (plus short header peeks)


def test_batch_answers_commands_before_an_error() -> None:
    with serve("batch") as srv, connect(srv) as sock:
        sock.sendall(cmd(b"SET", b"a", b"1") + cmd(b"GET", b"a") + b"*1\r\n$x\r\n" + cmd(b"PING"))
        data = recv_to_eof(sock)
        assert data == b"+OK\r\n$1\r\n1\r\n-ERR Protocol error: invalid bulk length\r\n"


# -- the reply budget -----------------------------------------------------------------------------
class Recording(resp.RespHandler):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.conns: list[Any] = []
        self.max_pending = 0

    def on_connect(self, conn: Any) -> None:
        super().on_connect(conn)
        self.conns.append(conn)

    def on_message(self, conn: Any, ctx: Any, data: Any) -> Any:
        self.max_pending = max(self.max_pending, conn.pending_write)
        return super().on_message(conn, ctx, data)

    def _resume(self, conn: Any, flow: Any) -> None:
        self.max_pending = max(self.max_pending, conn.pending_write)
        super()._resume(conn, flow)


def test_replies_held_back_while_output_is_over_the_limit_then_resumed(variant: str) -> None:
    mib = 1 << 20
    value = b"x" * mib
    n = 48
    handler = Recording(reply_limit=2 * mib)
    with Server(handler, address="127.0.0.1:0", protocol=PROTOCOLS[variant](),
                write_high_water=mib) as srv, connect(srv, rcvbuf=65536) as sock:
        ask(sock, cmd(b"SET", b"big", value), b"+OK\r\n")
        sock.sendall((cmd(b"GET", b"big") + cmd(b"PING")) * n)   # then read nothing for a while
        flow = handler.conns[0].context
        wait_for(lambda: flow.parked, "commands to be held back")
        time.sleep(0.05)
        assert flow.parked   # the client is not reading: they stay parked, nothing more is built
        assert handler.max_pending <= 2 * mib + mib + 64 * 1024
        expected = (bulk(value) + b"+PONG\r\n") * n
        assert recv_exactly(sock, len(expected)) == expected   # no more input needed to resume
        ask(sock, cmd(b"PING"), b"+PONG\r\n")
        assert flow.parked is None
        assert handler.max_pending <= 2 * mib + mib + 64 * 1024


def test_half_close_still_gets_the_parked_replies(variant: str) -> None:
    value = b"y" * (1 << 20)
    n = 16
    handler = resp.RespHandler(reply_limit=1 << 20)
    with Server(handler, address="127.0.0.1:0", protocol=PROTOCOLS[variant]()) as srv, \
            connect(srv, rcvbuf=65536) as sock:
        ask(sock, cmd(b"SET", b"big", value), b"+OK\r\n")
        sock.sendall(cmd(b"GET", b"big") * n + b"PING\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_to_eof(sock, limit=32 << 20) == bulk(value) * n + b"+PONG\r\n"


def test_protocol_error_type() -> None:
    protocol = resp.RespProtocol()
    conn = FakeConn()
    ring = RingBuffer(64)
    ring.write(b"*1\r\n!\r\n")
    with pytest.raises(ProtocolError):
        protocol.unpacket(conn, ring)
    assert [resp.encode(x) for x in conn.sent] == [b"-ERR Protocol error: expected '$', got '!'\r\n"]
    assert resp.encode([b"a", 1, resp.NIL, "OK", resp.Error("ERR x\r\ny")]) == \
        b"*5\r\n$1\r\na\r\n:1\r\n$-1\r\n+OK\r\n-ERR x  y\r\n"
