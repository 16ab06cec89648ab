"""Protocol Buffers messages over TCP in gev's frame format.

Frame: u32 big-endian length of the rest | u16 big-endian name length | the message's full
name (e.g. "pkg.Ping") | the serialized message.  `on_message` gets ctx = the full name (str)
and data = the decoded message; returning or sending a message instance encodes it.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

try:
    from google.protobuf.message import DecodeError, Message
except ImportError:
    from ..extras import missing
    raise missing("google.protobuf", "reactor.plugins.protobuf") from None

from ..protocol import Protocol, ProtocolError

if TYPE_CHECKING:
    from ringbuf import BufferReader

    from ..connection import Connection

__all__ = ["ProtobufProtocol"]

log = logging.getLogger("reactor.protobuf")

_LENGTH_SIZE = 4        # u32: length of everything after it
_NAME_LENGTH_SIZE = 2   # u16: length of the message name


class ProtobufProtocol(Protocol):
    """Frames protobuf messages of the registered classes (gev's protobuf plugin format).

    `ProtobufProtocol(PingClass, PongClass, max_frame_length=8 << 20)`: a frame (its 4-byte
    length included) over `max_frame_length`, a name that is not registered, or a payload that
    does not decode raises ProtocolError, which closes that connection.
    """

    def __init__(self, *message_classes: type[Message], max_frame_length: int = 8 << 20) -> None:
        if max_frame_length < _LENGTH_SIZE + _NAME_LENGTH_SIZE:
            raise ValueError(f"max_frame_length too small: {max_frame_length}")
        self.max_frame_length = max_frame_length
        self.max_pending = max(Protocol.max_pending, max_frame_length + 64)
        self._classes: dict[bytes, tuple[str, type[Message]]] = {}
        for cls in message_classes:
            self.register(cls)

    def register(self, message_class: type[Message]) -> None:
        """Accept messages of `message_class` (keyed by its full protobuf name)."""
        name = message_class.DESCRIPTOR.full_name
        encoded = name.encode("utf-8")
        if len(encoded) > 0xFFFF:
            raise ValueError(f"message name too long: {name[:40]}...")
        self._classes[encoded] = (name, message_class)

    @property
    def message_names(self) -> list[str]:
        """Full names of the registered message classes."""
        return [name for name, _ in self._classes.values()]

    def unpacket(self, conn: Connection | None, buffer: BufferReader) -> tuple[Any, Any] | None:
        """Return (full name, decoded message) once a whole frame is buffered."""
        rest = buffer.peek_uint(_LENGTH_SIZE)
        if rest is None:
            return None
        if rest < _NAME_LENGTH_SIZE:
            raise ProtocolError(f"bad length field: {rest} (a frame needs at least {_NAME_LENGTH_SIZE})")
        frame = _LENGTH_SIZE + rest
        if frame > self.max_frame_length:
            raise ProtocolError(f"frame too long: {frame} bytes (max_frame_length {self.max_frame_length})")
        if len(buffer) < frame:
            return None
        view = buffer.peek(frame)
        name_end = _LENGTH_SIZE + _NAME_LENGTH_SIZE + int.from_bytes(view[_LENGTH_SIZE:6], "big")
        if name_end > frame:
            raise ProtocolError(f"bad name length: {name_end - 6} in a {frame}-byte frame")
        entry = self._classes.get(bytes(view[6:name_end]))
        if entry is None:
            raise ProtocolError(f"unknown message name {bytes(view[6:name_end])[:80]!r}")
        name, cls = entry
        try:
            message = cls.FromString(view[name_end:])
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ProtocolError(f"undecodable {name} payload: {exc}") from None
        buffer.retrieve(frame)
        return name, message

    def encode(self, message: Message) -> bytes:
        """One frame carrying `message` (any message class; the peer must know its name)."""
        name = message.DESCRIPTOR.full_name.encode("utf-8")
        payload = message.SerializeToString()
        rest = _NAME_LENGTH_SIZE + len(name) + len(payload)
        return b"".join((rest.to_bytes(_LENGTH_SIZE, "big"), len(name).to_bytes(_NAME_LENGTH_SIZE, "big"),
                         name, payload))

    def packet(self, conn: Connection | None, data: Any) -> Any:
        """Encode a message instance; bytes-like replies are taken as already framed."""
        if isinstance(data, Message):
            return self.encode(data)
        if isinstance(data, (bytes, bytearray, memoryview)):
            return data
        raise TypeError(f"ProtobufProtocol cannot send {type(data).__name__}; send a protobuf message")

    def __repr__(self) -> str:
        return f"ProtobufProtocol({', '.join(self.message_names)}, max_frame_length={self.max_frame_length})"
