"""Frame codecs: turn a byte stream into messages by delimiter, fixed size or a length field.

Each codec bounds the frame it will buffer; an oversized or malformed frame raises
`ProtocolError` as soon as it is detectable (never after waiting for the rest of it), which
closes only that connection.  `on_message` gets the frame without its delimiter / stripped
header as a memoryview (no copy); `packet()` adds them back to a reply.

Native fast path: `native_plan()` tells the loop how to split these frames in C and frame
replies in C without calling `unpacket` / `packet`.  A subclass that overrides `unpacket` gets
no plan (its own rules run in Python); one that overrides only `packet` keeps the C splitting
and its `packet()` runs per reply.  The Python methods below follow the same rules byte for
byte as the C splitter, so either path sees the same frames and errors.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from ._native import CODEC_DELIMITER, CODEC_FIXED, CODEC_LENGTH, DELIM_MAX
from .protocol import NativePlan, Protocol, ProtocolError, overrides

if TYPE_CHECKING:
    from ringbuf import BufferReader

    from .connection import Connection

__all__ = ["DelimiterProtocol", "FixedLengthProtocol", "LengthFieldProtocol", "LineProtocol"]

_INT32_MAX = (1 << 31) - 1


def _nbytes(data: Any) -> int:
    """Length in bytes of a bytes-like object."""
    return data.nbytes if type(data) is memoryview else len(data)


def _plan(protocol: Protocol, base: type, split: dict[str, Any] | None, **reply: Any) -> NativePlan | None:
    """The native plan of a codec: None when a subclass has its own unpacket (or C cannot split
    these frames), the protocol's own packet() per reply when only packet is overridden."""
    if split is None or overrides(protocol, base, "unpacket"):
        return None
    if overrides(protocol, base, "packet"):
        return NativePlan(split=split, reply="packet")
    return NativePlan(split=split, **reply)


def _pending_bound(limit: int) -> int:
    """A max_pending that never cuts a legal frame short (the codec's own check comes first)."""
    return max(Protocol.max_pending, limit + 64)


class DelimiterProtocol(Protocol):
    """Frames end with `delimiter` (bytes); on_message gets the bytes before it.

    A frame longer than `max_length` bytes (delimiter excluded) closes the connection, as soon
    as that many bytes are buffered without a delimiter.  packet() appends the delimiter.
    """

    _strip_cr = False

    def __init__(self, delimiter: bytes, max_length: int = 65536) -> None:
        delimiter = bytes(delimiter)
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.delimiter = delimiter
        self.max_length = max_length
        self._search = re.compile(re.escape(delimiter)).search
        # bytes that may be buffered before a delimiter while the frame can still be legal
        self._slack = max_length + self._strip_cr + len(delimiter) - 1
        self.max_pending = _pending_bound(self._slack + 1)

    def unpacket(self, conn: Connection, buffer: BufferReader) -> tuple[Any, Any] | None:
        """Return (None, frame without delimiter) or None; ProtocolError when too long."""
        size = len(buffer)
        if size == 0:
            return None
        view = buffer.peek_all()
        found = self._search(view)
        if found is None:
            if size > self._slack:
                raise ProtocolError(f"frame too long: {size} bytes buffered without a delimiter "
                                    f"(max_length {self.max_length})")
            return None
        end = found.start()
        length = end
        if self._strip_cr and length and view[length - 1] == 13:
            length -= 1
        if length > self.max_length:
            raise ProtocolError(f"frame too long: {length} bytes (max_length {self.max_length})")
        data = view[:length]
        buffer.retrieve(end + len(self.delimiter))
        return None, data

    def packet(self, conn: Connection, data: Any) -> Any:
        """The reply followed by the delimiter."""
        return b"".join((data, self.delimiter))

    def native_plan(self) -> NativePlan | None:
        split = None
        if len(self.delimiter) <= DELIM_MAX and self.max_length <= _INT32_MAX:
            split = {"type": CODEC_DELIMITER, "delim": self.delimiter, "strip_cr": int(self._strip_cr),
                     "max_frame": self.max_length}
        # a stripped \r means the bytes that came are not always the reply framed again
        return _plan(self, DelimiterProtocol, split, reply="suffix", suffix=self.delimiter,
                     echo_identical=not self._strip_cr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.delimiter!r}, max_length={self.max_length})"


class LineProtocol(DelimiterProtocol):
    """Lines ending in b"\\n"; one trailing b"\\r" is stripped too.  packet() appends b"\\n"."""

    _strip_cr = True

    def __init__(self, max_length: int = 65536) -> None:
        super().__init__(b"\n", max_length)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_length={self.max_length})"


class FixedLengthProtocol(Protocol):
    """Every frame is exactly `length` bytes; packet() sends replies unchanged."""

    def __init__(self, length: int) -> None:
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.length = length
        self.max_pending = _pending_bound(length)

    def unpacket(self, conn: Connection, buffer: BufferReader) -> tuple[Any, Any] | None:
        """Return (None, next `length` bytes) once that many are buffered."""
        n = self.length
        if len(buffer) < n:
            return None
        data = buffer.peek(n)
        buffer.retrieve(n)
        return None, data

    def native_plan(self) -> NativePlan | None:
        split = None
        if self.length <= _INT32_MAX:
            split = {"type": CODEC_FIXED, "fixed": self.length, "max_frame": self.length}
        return _plan(self, FixedLengthProtocol, split, reply="none", echo_identical=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.length})"


class LengthFieldProtocol(Protocol):
    """Frames carrying their length in a header field, with netty's LengthFieldBasedFrameDecoder
    meaning of the parameters.

    The whole frame is `value + length_adjustment + length_field_offset + length_field_length`
    bytes; on_message gets the frame minus its first `initial_bytes_to_strip` bytes.  A frame
    whose whole length exceeds `max_frame_length` closes the connection as soon as its header is
    buffered.  packet() prepends the stripped bytes, computing the length field so that the
    same codec on the other side yields the reply (netty's LengthFieldPrepender for the usual
    offset 0 / strip = field length case; zeros for bytes before the field).
    """

    def __init__(self, length_field_offset: int = 0, length_field_length: int = 4,
                 length_adjustment: int = 0, initial_bytes_to_strip: int = 4,
                 byteorder: Literal["big", "little"] = "big",
                 max_frame_length: int = 8 << 20) -> None:
        if length_field_length not in (1, 2, 3, 4, 8):
            raise ValueError(f"length_field_length must be 1, 2, 3, 4 or 8, got {length_field_length}")
        if length_field_offset < 0:
            raise ValueError(f"length_field_offset must be >= 0, got {length_field_offset}")
        if initial_bytes_to_strip < 0:
            raise ValueError(f"initial_bytes_to_strip must be >= 0, got {initial_bytes_to_strip}")
        if byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', got {byteorder!r}")
        if max_frame_length <= 0:
            raise ValueError(f"max_frame_length must be positive, got {max_frame_length}")
        self.length_field_offset = length_field_offset
        self.length_field_length = length_field_length
        self.length_adjustment = length_adjustment
        self.initial_bytes_to_strip = initial_bytes_to_strip
        self.byteorder: Literal["big", "little"] = byteorder
        self.max_frame_length = max_frame_length
        self._header_end = length_field_offset + length_field_length
        self.max_pending = _pending_bound(max_frame_length)

    def unpacket(self, conn: Connection, buffer: BufferReader) -> tuple[Any, Any] | None:
        """Return (None, frame minus stripped bytes) once whole; ProtocolError on a bad or
        too long length, as soon as the header is buffered."""
        header_end = self._header_end
        value = buffer.peek_uint(self.length_field_length, self.length_field_offset, self.byteorder)
        if value is None:
            return None
        frame = value + self.length_adjustment + header_end
        strip = self.initial_bytes_to_strip
        if frame < header_end or strip > frame:
            raise ProtocolError(f"bad length field: {value} gives a frame of {frame} bytes "
                                f"(header {header_end}, strip {strip})")
        if frame > self.max_frame_length:
            raise ProtocolError(f"frame too long: {frame} bytes (max_frame_length {self.max_frame_length})")
        if len(buffer) < frame:
            return None
        if strip:
            buffer.retrieve(strip)
        size = frame - strip
        data = buffer.peek(size)
        buffer.retrieve(size)
        return None, data

    def _header_for(self, size: int) -> bytes:
        """The first `initial_bytes_to_strip` bytes of a frame whose body after them is `size` bytes."""
        strip = self.initial_bytes_to_strip
        header_end = self._header_end
        value = size + strip - self.length_adjustment - header_end
        if value < 0:
            raise ValueError(f"a {size}-byte message cannot be framed: length field would be {value}")
        header = bytes(self.length_field_offset) + value.to_bytes(self.length_field_length, self.byteorder)
        if strip >= header_end:
            return header + bytes(strip - header_end)
        return header[:strip]

    def packet(self, conn: Connection, data: Any) -> Any:
        """The reply behind a header that makes this codec decode it back to the same bytes."""
        if self._simple_header():
            return b"".join((_nbytes(data).to_bytes(self.length_field_length, self.byteorder), data))
        if self.initial_bytes_to_strip == 0:
            return data
        return b"".join((self._header_for(_nbytes(data)), data))

    def _simple_header(self) -> bool:
        return (self.length_field_offset == 0 and self.length_adjustment == 0
                and self.initial_bytes_to_strip == self.length_field_length)

    def native_plan(self) -> NativePlan | None:
        split = None
        if (self.max_frame_length <= _INT32_MAX and self._header_end <= _INT32_MAX
                and self.initial_bytes_to_strip <= _INT32_MAX
                and -_INT32_MAX - 1 <= self.length_adjustment <= _INT32_MAX):
            split = {"type": CODEC_LENGTH, "len_offset": self.length_field_offset,
                     "len_size": self.length_field_length, "adjust": self.length_adjustment,
                     "strip": self.initial_bytes_to_strip, "little": int(self.byteorder == "little"),
                     "max_frame": self.max_frame_length}
        if self._simple_header():      # the header we'd write is the one that came
            return _plan(self, LengthFieldProtocol, split, reply="header",
                         header_width=self.length_field_length, header_order=self.byteorder,
                         echo_identical=True)
        if self.initial_bytes_to_strip == 0:   # the payload carries its own header
            return _plan(self, LengthFieldProtocol, split, reply="none", echo_identical=True)
        return _plan(self, LengthFieldProtocol, split, reply="packet")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(length_field_offset={self.length_field_offset}, "
                f"length_field_length={self.length_field_length}, "
                f"length_adjustment={self.length_adjustment}, "
                f"initial_bytes_to_strip={self.initial_bytes_to_strip}, byteorder={self.byteorder!r}, "
                f"max_frame_length={self.max_frame_length})")
