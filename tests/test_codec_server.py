"""reactor.codec through a real server: the exact classes (frames split in C) and trivial
subclasses (Python unpacket/packet) must give the same bytes back and the same closes."""
from __future__ import annotations

import logging
import random

import pytest
from support import EchoRecorder, closed_by_peer, connect, recv_exactly, serve

from codec_reference import PyDelimiter, PyFixed, PyLengthField, PyLine

from reactor.codec import DelimiterProtocol, FixedLengthProtocol, LengthFieldProtocol, LineProtocol


class Upper(EchoRecorder):
    """Replies with the frame upper-cased, so a reply proves the frame boundaries."""

    def on_message(self, conn, ctx, data):
        return bytes(data).upper()


# (native class, python subclass, kwargs, request frames on the wire, expected reply on the wire)
CASES = {
    "line": (LineProtocol, PyLine, {"max_length": 32},
             b"hello\r\nworld\n\nab\r\r\n", b"HELLO\nWORLD\n\nAB\r\n"),
    "delimiter": (DelimiterProtocol, PyDelimiter, {"delimiter": b"||", "max_length": 32},
                  b"a|b||||cd||", b"A|B||||CD||"),
    "fixed": (FixedLengthProtocol, PyFixed, {"length": 3}, b"abcdefghi", b"ABCDEFGHI"),
    "length": (LengthFieldProtocol, PyLengthField, {"max_frame_length": 64},
               b"\0\0\0\x02hi\0\0\0\0\0\0\0\x05there", b"\0\0\0\x02HI\0\0\0\0\0\0\0\x05THERE"),
}

# (kwargs, bytes that must close the connection at once: no more bytes will come)
OVERSIZE = {
    "line": b"x" * 34,                       # 32 content + '\r' could still be legal; 34 cannot
    "delimiter": b"y" * 34,
    "length": b"\0\0\0\x3d",                # 61 + 4 header = 65 > 64, known from the header alone
}


@pytest.fixture(params=["native", "python"])
def path(request):
    return request.param


@pytest.mark.parametrize("name", sorted(CASES))
def test_codec_frames_split_and_pipelined(name, path):
    native, python, kwargs, request, reply = CASES[name]
    proto = (native if path == "native" else python)(**kwargs)
    with serve(Upper(), protocol=proto) as srv:
        # byte by byte
        with connect(srv.address) as sock:
            for i in range(len(request)):
                sock.sendall(request[i:i + 1])
            assert recv_exactly(sock, len(reply)) == reply
        # many requests pipelined, cut at random points (a few KiB: sendall cannot block)
        rng = random.Random(name)
        stream = request * 200
        with connect(srv.address) as sock:
            pos = 0
            while pos < len(stream):
                step = rng.randint(1, 37)
                sock.sendall(stream[pos:pos + step])
                pos += step
            assert recv_exactly(sock, len(reply) * 200) == reply * 200


@pytest.mark.parametrize("name", sorted(OVERSIZE))
def test_codec_oversized_frame_closes_only_that_connection(name, path, caplog):
    native, python, kwargs, request, reply = CASES[name]
    proto = (native if path == "native" else python)(**kwargs)
    caplog.set_level(logging.WARNING, logger="reactor")
    handler = Upper()
    with serve(handler, protocol=proto) as srv, connect(srv.address) as good, connect(srv.address) as bad:
        good.sendall(request)
        assert recv_exactly(good, len(reply)) == reply
        bad.sendall(request + OVERSIZE[name])           # the good frames first, then too long
        assert recv_exactly(bad, len(reply)) == reply
        assert closed_by_peer(bad)
        good.sendall(request)                            # the other connection still works
        assert recv_exactly(good, len(reply)) == reply
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("reactor")]
    assert any("too long" in r.getMessage() or "exceeds" in r.getMessage() for r in warnings)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("reactor")]


def test_length_field_bad_length_closes(path, caplog):
    cls = LengthFieldProtocol if path == "native" else PyLengthField
    proto = cls(length_adjustment=-8, initial_bytes_to_strip=0)
    caplog.set_level(logging.WARNING, logger="reactor")
    with serve(Upper(), protocol=proto) as srv, connect(srv.address) as sock:
        sock.sendall(b"\0\0\0\x0cabcd" + b"\0\0\0\x01")      # 12 - 8 + 4 = 8: one good frame, then bad
        assert recv_exactly(sock, 8) == b"\0\0\0\x0cABCD"
        assert closed_by_peer(sock)
    assert any("length" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_length_field_netty_layout_round_trip(path):
    kwargs = {"length_field_offset": 1, "length_field_length": 2, "length_adjustment": 1,
              "initial_bytes_to_strip": 3}
    cls = LengthFieldProtocol if path == "native" else PyLengthField
    with serve(Upper(), protocol=cls(**kwargs)) as srv, connect(srv.address) as sock:
        sock.sendall(b"\xca\x00\x05\xfehello" * 3)
        # on_message got b"\xfehello"; packet() put back a zero prefix byte and the length
        assert recv_exactly(sock, 27) == b"\x00\x00\x05\xfeHELLO" * 3
