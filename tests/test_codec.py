"""reactor.codec without sockets: Python unpacket/packet on ViewBuffer and RingBuffer, checked
against the native C splitter the server uses for the exact classes."""
from __future__ import annotations

import pytest
from codec_reference import StubConn, native_frames, python_frames
from hypothesis import given, settings
from hypothesis import strategies as st

from reactor.codec import DelimiterProtocol, FixedLengthProtocol, LengthFieldProtocol, LineProtocol
from reactor.protocol import ProtocolError
from ringbuf import RingBuffer, ViewBuffer

HELLO = b"HELLO, WORLD"

def _pack(proto):
    """The native reply framing a codec's plan asks for, as a tuple (None: packet() runs)."""
    plan = proto.native_plan()
    if plan is None or plan.reply == "packet":
        return None
    if plan.reply == "suffix":
        return ("suffix", plan.suffix)
    if plan.reply == "header":
        return ("uint", plan.header_width, plan.header_order)
    return ("none",)


def _codec(proto):
    """The C splitter settings of a codec's plan (None: the Python path)."""
    plan = proto.native_plan()
    return plan.split if plan is not None else None



def frames_all_ways(protocol, stream):
    """Python frames whole, byte by byte and in 3-byte chunks, and the C splitter's; all equal."""
    expected = python_frames(protocol, stream)
    assert python_frames(protocol, stream, chunk=1)[:2] == expected[:2]
    assert python_frames(protocol, stream, chunk=3)[:2] == expected[:2]
    assert native_frames(protocol, stream) == expected
    return expected


# -- LineProtocol / DelimiterProtocol ---------------------------------------------------------

def test_line_strips_one_cr_and_keeps_leftover():
    frames, err, left = frames_all_ways(LineProtocol(), b"one\r\ntwo\n\r\r\n\nthree\r")
    assert frames == [b"one", b"two", b"\r", b""]
    assert err is None and left == len(b"three\r")


def test_line_too_long_with_delimiter_and_without():
    assert frames_all_ways(LineProtocol(4), b"abcd\r\nabcde\n") == ([b"abcd"], "too long", -1)
    # no delimiter yet: 4 content + '\r' may still be legal, one more byte is not
    assert frames_all_ways(LineProtocol(4), b"abcd\r") == ([], None, 5)
    assert frames_all_ways(LineProtocol(4), b"abcd\rx") == ([], "too long", -1)


def test_line_error_raised_before_rest_arrives():
    proto = LineProtocol(max_length=10)
    ring = RingBuffer(64)
    ring.write(b"x" * 12)
    with pytest.raises(ProtocolError, match="too long"):
        proto.unpacket(StubConn(), ring)


def test_delimiter_multibyte_and_packet():
    proto = DelimiterProtocol(b"\r\n\r\n", max_length=8)
    frames, err, left = frames_all_ways(proto, b"a\r\nb\r\n\r\n\r\n\r\nrest\r\n\r")
    assert frames == [b"a\r\nb", b""] and err is None and left == 7
    assert proto.packet(None, memoryview(b"xy")) == b"xy\r\n\r\n"
    assert _pack(proto) == ("suffix", b"\r\n\r\n")


def test_line_packet_and_native_pack():
    proto = LineProtocol()
    assert proto.packet(None, b"hi") == b"hi\n"
    assert proto.packet(None, bytearray(b"")) == b"\n"
    assert _pack(proto) == ("suffix", b"\n")
    assert _codec(proto) == {"type": 2, "delim": b"\n", "strip_cr": 1, "max_frame": 65536}


def test_delimiter_native_limits():
    assert _codec(DelimiterProtocol(b"x" * 17)) is None
    assert _codec(DelimiterProtocol(b"x" * 16)) is not None
    assert _codec(LineProtocol(1 << 31)) is None
    # the Python path still works where C cannot be configured
    proto = DelimiterProtocol(b"<" * 17 + b">")
    assert python_frames(proto, b"ab" + b"<" * 17 + b">c") == ([b"ab"], None, 1)


def test_delimiter_rejects_bad_config():
    with pytest.raises(ValueError):
        DelimiterProtocol(b"")
    with pytest.raises(ValueError):
        LineProtocol(0)


# -- FixedLengthProtocol ----------------------------------------------------------------------

def test_fixed_length_frames():
    proto = FixedLengthProtocol(3)
    assert frames_all_ways(proto, b"abcdefgh") == ([b"abc", b"def"], None, 2)
    assert proto.packet(None, b"xyz") == b"xyz"
    assert _pack(proto) == ("none",)
    assert _codec(proto) == {"type": 3, "fixed": 3, "max_frame": 3}
    with pytest.raises(ValueError):
        FixedLengthProtocol(0)


# -- LengthFieldProtocol: netty's documented examples ----------------------------------------

NETTY_CASES = [
    # (kwargs, stream, decoded frame)
    ({"length_field_length": 2, "initial_bytes_to_strip": 0}, b"\x00\x0c" + HELLO, b"\x00\x0c" + HELLO),
    ({"length_field_length": 2, "initial_bytes_to_strip": 2}, b"\x00\x0c" + HELLO, HELLO),
    ({"length_field_length": 2, "length_adjustment": -2, "initial_bytes_to_strip": 0},
     b"\x00\x0e" + HELLO, b"\x00\x0e" + HELLO),
    ({"length_field_offset": 2, "length_field_length": 3, "initial_bytes_to_strip": 0},
     b"\xca\xfe\x00\x00\x0c" + HELLO, b"\xca\xfe\x00\x00\x0c" + HELLO),
    ({"length_field_length": 3, "length_adjustment": 2, "initial_bytes_to_strip": 0},
     b"\x00\x00\x0c\xca\xfe" + HELLO, b"\x00\x00\x0c\xca\xfe" + HELLO),
    ({"length_field_offset": 1, "length_field_length": 2, "length_adjustment": 1, "initial_bytes_to_strip": 3},
     b"\xca\x00\x0c\xfe" + HELLO, b"\xfe" + HELLO),
    ({"length_field_offset": 1, "length_field_length": 2, "length_adjustment": -3, "initial_bytes_to_strip": 3},
     b"\xca\x00\x10\xfe" + HELLO, b"\xfe" + HELLO),
]


@pytest.mark.parametrize("kwargs,stream,frame", NETTY_CASES)
def test_length_field_netty_examples(kwargs, stream, frame):
    proto = LengthFieldProtocol(**kwargs)
    assert frames_all_ways(proto, stream + stream + stream[:3]) == ([frame, frame], None, 3)


def test_length_field_default_is_u32_be_stripped():
    proto = LengthFieldProtocol()
    assert frames_all_ways(proto, b"\0\0\0\x03abc\0\0\0\0\0\0") == ([b"abc", b""], None, 2)
    assert proto.packet(None, b"abc") == b"\0\0\0\x03abc"
    assert _pack(proto) == ("uint", 4, "big")


def test_length_field_little_endian_and_widths():
    for width in (1, 2, 3, 4, 8):
        proto = LengthFieldProtocol(length_field_length=width, initial_bytes_to_strip=width,
                                    byteorder="little")
        wire = proto.packet(None, b"payload")
        assert wire == (7).to_bytes(width, "little") + b"payload"
        assert frames_all_ways(proto, wire * 2) == ([b"payload"] * 2, None, 0)
        assert _pack(proto) == ("uint", width, "little")


def test_length_field_too_long_detected_at_header():
    proto = LengthFieldProtocol(max_frame_length=100)
    # whole frame length (header included) is what counts, as in netty
    assert python_frames(proto, b"\0\0\0\x60" + b"x" * 96) == ([b"x" * 96], None, 0)
    assert frames_all_ways(proto, b"\0\0\0\x61") == ([], "too long", -1)
    assert frames_all_ways(proto, b"\xff\xff\xff\xff") == ([], "too long", -1)


def test_length_field_bad_lengths():
    # adjustment makes the frame shorter than its own header
    proto = LengthFieldProtocol(length_adjustment=-8, initial_bytes_to_strip=0)
    assert frames_all_ways(proto, b"\0\0\0\x03abc") == ([], "bad length", -1)
    # more bytes to strip than the frame has
    proto = LengthFieldProtocol(initial_bytes_to_strip=9)
    assert frames_all_ways(proto, b"\0\0\0\x03abcdefgh") == ([], "bad length", -1)


def test_length_field_u64_huge_value():
    proto = LengthFieldProtocol(length_field_length=8, initial_bytes_to_strip=8)
    assert frames_all_ways(proto, b"\xff" * 8) == ([], "too long", -1)
    assert frames_all_ways(proto, b"\x00\x00\x00\x02\x00\x00\x00\x00") == ([], "too long", -1)


@pytest.mark.parametrize("kwargs,stream,frame", NETTY_CASES)
def test_length_field_packet_inverts_unpacket(kwargs, stream, frame):
    proto = LengthFieldProtocol(**kwargs)
    wire = proto.packet(None, frame)
    assert python_frames(proto, wire) == ([frame], None, 0)
    pack = _pack(proto)
    if pack is not None and pack[0] == "none":
        assert wire == frame


def test_length_field_unpacket_views_not_copies():
    proto = LengthFieldProtocol()
    buf = ViewBuffer(b"\0\0\0\x02hi")
    _, data = proto.unpacket(StubConn(), buf)
    assert isinstance(data, memoryview) and data == b"hi" and len(buf) == 0


def test_length_field_config_checks():
    for bad in ({"length_field_length": 5}, {"length_field_offset": -1}, {"byteorder": "middle"},
                {"max_frame_length": 0}, {"initial_bytes_to_strip": -1}):
        with pytest.raises(ValueError):
            LengthFieldProtocol(**bad)
    assert _codec(LengthFieldProtocol(max_frame_length=1 << 31)) is None
    assert _codec(LengthFieldProtocol(max_frame_length=(1 << 31) - 1))["max_frame"] == (1 << 31) - 1


def test_codecs_raise_max_pending_for_large_frames():
    assert LengthFieldProtocol(max_frame_length=64 << 20).max_pending > 64 << 20
    assert LineProtocol().max_pending >= 16 << 20


# -- property: Python path == C splitter, whatever the stream and chunking --------------------

@st.composite
def codecs(draw):
    kind = draw(st.sampled_from(["line", "delim", "fixed", "length"]))
    if kind == "line":
        return LineProtocol(draw(st.integers(1, 12)))
    if kind == "delim":
        return DelimiterProtocol(draw(st.binary(min_size=1, max_size=3)), draw(st.integers(1, 12)))
    if kind == "fixed":
        return FixedLengthProtocol(draw(st.integers(1, 9)))
    width = draw(st.sampled_from([1, 2, 3, 4, 8]))
    offset = draw(st.integers(0, 3))
    return LengthFieldProtocol(
        length_field_offset=offset, length_field_length=width,
        length_adjustment=draw(st.integers(-6, 6)),
        initial_bytes_to_strip=draw(st.integers(0, offset + width + 2)),
        byteorder=draw(st.sampled_from(["big", "little"])),
        max_frame_length=draw(st.integers(1, 40)))


@settings(max_examples=50, deadline=None)
@given(proto=codecs(), parts=st.lists(st.one_of(st.binary(max_size=12),
                                                st.sampled_from([b"\n", b"\r\n", b"\0", b"\x03", b"\x80"])),
                                      max_size=12),
       chunk=st.integers(1, 7))
def test_python_path_matches_native_splitter(proto, parts, chunk):
    stream = b"".join(parts)
    native = native_frames(proto, stream)
    assert python_frames(proto, stream) == native
    assert python_frames(proto, stream, chunk=chunk)[:2] == native[:2]


@settings(max_examples=40, deadline=None)
@given(proto=codecs(), messages=st.lists(st.binary(max_size=10), max_size=5))
def test_packet_then_unpacket_round_trips(proto, messages):
    if isinstance(proto, DelimiterProtocol):
        messages = [m.replace(proto.delimiter[:1], b"") for m in messages]
        if isinstance(proto, LineProtocol):
            messages = [m.rstrip(b"\r") for m in messages]
        messages = [m[:proto.max_length] for m in messages]
    elif isinstance(proto, FixedLengthProtocol):
        messages = [(m + bytes(proto.length))[:proto.length] for m in messages]
    try:
        wire = b"".join(proto.packet(None, m) for m in messages)
    except (ValueError, OverflowError):
        return  # a message this length field cannot express
    partial_header = isinstance(proto, LengthFieldProtocol) and proto.initial_bytes_to_strip < proto._header_end
    frames, err, left = python_frames(proto, wire)
    if not partial_header:  # (there a reply must carry the unstripped part of its header itself)
        too_big = isinstance(proto, LengthFieldProtocol) and any(
            len(m) + proto.initial_bytes_to_strip > proto.max_frame_length for m in messages)
        assert (frames, err, left) == ((messages, None, 0) if not too_big else (frames, "too long", -1))
    pack = _pack(proto)
    for m in messages:
        if pack is None:
            break
        try:
            out = bytes(proto.packet(None, m))
        except (ValueError, OverflowError):
            continue
        if pack[0] == "none":
            assert out == m
        elif pack[0] == "suffix":
            assert out == m + pack[1]
        else:
            assert out == len(m).to_bytes(pack[1], pack[2]) + m
