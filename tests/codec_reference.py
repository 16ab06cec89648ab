"""Test helpers for the codecs: run a codec's Python unpacket over a byte stream (whole or in
chunks), and run the same stream through the native C splitter the server uses."""
from __future__ import annotations

from typing import Any

from reactor._native import configure_codec, ffi, lib

from reactor.codec import DelimiterProtocol, FixedLengthProtocol, LengthFieldProtocol, LineProtocol
from reactor.protocol import ProtocolError
from ringbuf import RingBuffer, ViewBuffer


class StubConn:
    """The little of a Connection that the codecs touch."""

    def __init__(self) -> None:
        self.protocol_state: Any = None


def error_kind(message: str) -> str:
    """Classify a ProtocolError message as the C splitter does: 'too long' or 'bad length'."""
    if message.startswith("frame too long"):
        return "too long"
    if message.startswith("bad length"):
        return "bad length"
    raise AssertionError(f"unexpected codec error message: {message!r}")


def python_frames(protocol: Any, stream: bytes, chunk: int = 0) -> tuple[list[bytes], str | None, int]:
    """Frames Python's unpacket yields for `stream` fed `chunk` bytes at a time (0 = all at
    once, through a ViewBuffer; otherwise through a RingBuffer).  Returns (frames, error kind or
    None, bytes left unconsumed, -1 after an error)."""
    conn = StubConn()
    frames: list[bytes] = []
    if chunk <= 0:
        buf: Any = ViewBuffer(stream)
        pieces = [b""]
    else:
        buf = RingBuffer(64)
        pieces = [stream[i:i + chunk] for i in range(0, len(stream), chunk)] or [b""]
    for piece in pieces:
        if chunk > 0:
            buf.write(piece)
        try:
            while True:
                got = protocol.unpacket(conn, buf)
                if got is None:
                    break
                frames.append(bytes(got[1]))
        except ProtocolError as exc:
            return frames, error_kind(str(exc)), -1
    return frames, None, len(buf)


def native_frames(protocol: Any, stream: bytes) -> tuple[list[bytes], str | None, int]:
    """Frames the C splitter (pg_split) yields for the whole `stream` at once, with the codec
    configured from protocol.native_plan()."""
    plan = protocol.native_plan()
    assert plan is not None and plan.split is not None
    codec = ffi.new("pg_codec *")
    configure_codec(codec, plan.split)
    maxrows = len(stream) + 8
    rows = ffi.new("int32_t[]", 4 * maxrows)
    nrows = ffi.new("int *")
    src = ffi.from_buffer(stream) if stream else ffi.new("char[]", 1)
    done = lib.pg_split(codec, src, len(stream), 7, rows, maxrows, nrows)
    frames: list[bytes] = []
    error = None
    for i in range(nrows[0]):
        fd, a, b, kind = rows[4 * i:4 * i + 4]
        assert fd == 7
        if kind == lib.PG_R_FRAME:
            frames.append(stream[a:a + b])
        elif kind == lib.PG_R_FRAME_ERROR:
            error = "too long" if a == lib.PG_FRAME_TOO_LONG else "bad length"
    if error is not None:
        assert done == -1
        return frames, error, -1
    return frames, None, len(stream) - done


# Trivial subclasses: a server never splits a subclass in C, so these take the Python path.
class PyLine(LineProtocol):
    pass


class PyDelimiter(DelimiterProtocol):
    pass


class PyFixed(FixedLengthProtocol):
    pass


class PyLengthField(LengthFieldProtocol):
    pass
