"""Bad input over real sockets: random and mutated byte streams fed to every codec (C and
Python paths) and to the WebSocket protocol.  Nothing may escape as an unhandled error (no
ERROR log from the reactor), every connection ends cleanly, a good client keeps being served,
and no connection buffers more than its protocol's bound."""
from __future__ import annotations

import logging
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import EchoRecorder, connect, recv_exactly, recv_to_eof, serve
from websocket_frames import frame, upgrade_request

from codec_reference import PyDelimiter, PyFixed, PyLengthField, PyLine

from reactor.codec import DelimiterProtocol, FixedLengthProtocol, LengthFieldProtocol, LineProtocol
from reactor.plugins.websocket import WebSocketProtocol

READ_SIZE = 65536     # the server's read_buffer_size: one read may sit on top of a partial frame


LENGTH = {"length_field_length": 2, "initial_bytes_to_strip": 2, "max_frame_length": 64}
CONFIGS = {
    # name: (protocol factory, bytes a good client sends, reply it expects, memory bound)
    "line": (lambda: LineProtocol(max_length=64), b"ok\n", b"ok\n", 64 + 2),
    "line-py": (lambda: PyLine(max_length=64), b"ok\n", b"ok\n", 64 + 2),
    "delimiter": (lambda: DelimiterProtocol(b"\0\0", max_length=64), b"ok\0\0", b"ok\0\0", 64 + 2),
    "delimiter-py": (lambda: PyDelimiter(b"\0\0", max_length=64), b"ok\0\0", b"ok\0\0", 64 + 2),
    "fixed": (lambda: FixedLengthProtocol(5), b"12345", b"12345", 5),
    "fixed-py": (lambda: PyFixed(5), b"12345", b"12345", 5),
    "length": (lambda: LengthFieldProtocol(**LENGTH), b"\0\x02ok", b"\0\x02ok", 64),
    "length-py": (lambda: PyLengthField(**LENGTH), b"\0\x02ok", b"\0\x02ok", 64),
}
WS_MAX = 256


class ErrorLog(logging.Handler):
    """Collects ERROR records from the reactor's loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Servers:
    """One echo server per configuration, each with a good client connected throughout."""

    def __init__(self) -> None:
        self.running: dict[str, tuple] = {}
        self.errors = ErrorLog()
        logging.getLogger("reactor").addHandler(self.errors)

    def get(self, name: str):
        if name not in self.running:
            handler = EchoRecorder()
            if name == "websocket":
                protocol = WebSocketProtocol(max_message_size=WS_MAX)
            else:
                protocol = CONFIGS[name][0]()
            srv = serve(handler, protocol=protocol)
            srv.__enter__()
            good = connect(srv.address)
            if name == "websocket":
                good.sendall(upgrade_request())
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    head += recv_exactly(good, 1)
            self.running[name] = (srv, handler, good)
        return self.running[name]

    def close(self) -> None:
        for srv, _, good in self.running.values():
            good.close()
            srv.__exit__(None, None, None)
        logging.getLogger("reactor").removeHandler(self.errors)


@pytest.fixture(scope="module")
def servers():
    s = Servers()
    yield s
    s.close()


def good_round_trip(name: str, good: socket.socket) -> None:
    if name == "websocket":
        good.sendall(frame("still served", opcode=1))
        assert recv_exactly(good, 14) == b"\x81\x0cstill served"
    else:
        _, request, reply, _ = CONFIGS[name]
        good.sendall(request)
        assert recv_exactly(good, len(reply)) == reply


def feed(servers: Servers, name: str, stream: bytes, cuts: list[int]) -> None:
    """Send `stream` cut at `cuts`, half-close, read to EOF; then check the invariants."""
    srv, handler, good = servers.get(name)
    bound = (WS_MAX + 14 + 16384 if name == "websocket" else CONFIGS[name][3]) + READ_SIZE
    with connect(srv.address) as sock:
        pos = 0
        try:
            for cut in sorted(set(cuts)) + [len(stream)]:
                if cut > pos:
                    sock.sendall(stream[pos:cut])
                    pos = cut
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass                                # closed for bad input while we were sending
        for conn in list(handler.connected):
            assert conn.pending_read <= bound
        try:
            recv_to_eof(sock)                   # bounded: the server must end the connection
        except ConnectionResetError:
            pass
    good_round_trip(name, good)
    assert not servers.errors.records, [r.getMessage() for r in servers.errors.records]


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (op, position, byte) edits: 0 flip a byte, 1 insert, 2 delete, 3 duplicate a run."""
    out = bytearray(data)
    for op, pos, byte in edits:
        if not out and op != 1:
            continue
        i = pos % (len(out) + 1)
        if op == 0 and i < len(out):
            out[i] ^= byte or 1
        elif op == 1:
            out[i:i] = bytes((byte,))
        elif op == 2:
            del out[i:i + 1 + byte % 8]
        else:
            out[i:i] = out[i:i + 1 + byte % 16]
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(CONFIGS))
@FUZZ
@given(messages=st.lists(st.binary(max_size=80), max_size=8), changes=edits,
       noise=st.binary(max_size=300), cuts=st.lists(st.integers(0, 2000), max_size=6),
       random_only=st.booleans())
def test_codecs_survive_random_and_mutated_streams(servers, name, messages, changes, noise, cuts,
                                                   random_only):
    proto = CONFIGS[name][0]()
    if random_only:
        stream = noise
    else:
        wire = b""
        for m in messages:
            try:
                wire += bytes(proto.packet(None, m))
            except (ValueError, OverflowError):
                pass
        stream = mutate(wire, changes)
    feed(servers, name, stream, cuts)


@st.composite
def ws_frames(draw):
    """A client frame, sometimes well-formed, sometimes with odd bits, lengths or masks."""
    payload = draw(st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)))
    return frame(payload, opcode=draw(st.sampled_from([0, 1, 2, 8, 9, 10, 3, 11])),
                 fin=draw(st.booleans()), rsv=draw(st.sampled_from([0, 0, 0, 1, 4])),
                 mask=draw(st.sampled_from([True, True, True, False])))


@FUZZ
@given(frames=st.lists(ws_frames(), max_size=6), changes=edits, noise=st.binary(max_size=300),
       cuts=st.lists(st.integers(0, 3000), max_size=6),
       mode=st.sampled_from(["frames", "mutated frames", "mutated handshake", "garbage"]))
def test_websocket_survives_random_and_mutated_streams(servers, frames, changes, noise, cuts, mode):
    if mode == "frames":
        stream = upgrade_request() + b"".join(frames)
    elif mode == "mutated frames":
        stream = upgrade_request() + mutate(b"".join(frames), changes)
    elif mode == "mutated handshake":
        stream = mutate(upgrade_request(), changes) + b"".join(frames)
    else:
        stream = noise
    feed(servers, "websocket", stream, cuts)
