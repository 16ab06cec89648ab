"""Protocol: how a connection's byte stream becomes messages (unpacket) and back (packet).

The server calls `unpacket(conn, buffer)` repeatedly while it returns a `(ctx, data)` pair;
each pair goes to `Handler.on_message(conn, ctx, data)`.  Whatever the handler returns (or
hands to `conn.send`) goes through `packet(conn, data)` on the connection's loop thread before
it is written.  `buffer` offers the RingBuffer reading API (len, peek, peek_all, peek_uint,
retrieve, retrieve_all, read, read_into, virtual_*) over the connection's unread bytes; bytes
left unconsumed are kept for the next call.

A protocol may also say what the native layer can do for it instead (`native_plan()`): split
its frames in C and frame replies in C.  The loop asks once, when it is set up, and never asks
which class a protocol is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import ProtocolError

if TYPE_CHECKING:
    from ringbuf import BufferReader

    from .connection import Connection

__all__ = ["DefaultProtocol", "NativePlan", "Protocol", "ProtocolError"]


@dataclass(frozen=True)
class NativePlan:
    """What the native layer does for a protocol in place of `unpacket` / `packet`.

    `split`: the C frame splitter's settings (pg_codec field names, see reactor/_reactor.h), or
    None when every read is one message.  `reply`: how a reply is framed - "none" (sent as it
    is), "suffix" (followed by `suffix`), "header" (behind a `header_width`-byte unsigned length
    in `header_order`), or "packet" (the protocol's own `packet()` runs per reply).
    `echo_identical`: a reply that *is* the payload view equals, framing included, the bytes
    that arrived, so it may be sent as that arena range (consecutive ones merged).
    """

    split: dict[str, Any] | None = None
    reply: Literal["none", "suffix", "header", "packet"] = "none"
    suffix: bytes = b""
    header_width: int = 0
    header_order: Literal["big", "little"] = "big"
    echo_identical: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def overrides(obj: object, base: type, name: str) -> bool:
    """True when `obj`'s class replaces `base`'s method `name` (a subclass with its own rules)."""
    return getattr(type(obj), name) is not getattr(base, name)


class Protocol:
    """Base class for framing protocols.  Subclasses override `unpacket` and `packet`.

    `max_pending` bounds the unparsed bytes a connection may hold while `unpacket` waits for
    more; past it the connection is closed with a ProtocolError, so memory stays bounded.
    """

    max_pending: int = 16 << 20

    def unpacket(self, conn: Connection, buffer: BufferReader) -> tuple[Any, Any] | None:
        """Take one message out of `buffer` and return (ctx, data), or None to wait for more."""
        if len(buffer) == 0:
            return None
        data = buffer.peek_all()
        buffer.retrieve_all()
        return None, data

    def packet(self, conn: Connection, data: Any) -> Any:
        """Turn a handler's reply into bytes-like output (identity by default)."""
        return data

    def native_plan(self) -> NativePlan | None:
        """What the native layer may do for this protocol; None: call unpacket/packet."""
        return None

    def pending_output(self, conn: Connection) -> int:
        """Bytes this protocol holds for `conn` that are not queued yet (e.g. frames sent before
        a handshake ends); counted in `conn.pending_write`."""
        return 0

    def connection_made(self, conn: Connection) -> None:
        """Called on the loop thread when a connection is accepted, before Handler.on_connect."""

    def closing(self, conn: Connection, reason: str) -> None:
        """The server side starts closing `conn` ("local" for conn.close(), "idle", "stop", or a
        timeout label) while `conn.send_raw()` still works: send a goodbye here (a WebSocket
        close frame); it goes out before the FIN.  Not called when the peer closed first, on a
        reset, or after bad input."""

    def connection_lost(self, conn: Connection, error: BaseException | None) -> None:
        """Called on the loop thread when a connection closes, before Handler.on_close."""


class DefaultProtocol(Protocol):
    """Pass-through: every read is handed to on_message as one message, without framing."""

    def native_plan(self) -> NativePlan | None:
        if overrides(self, DefaultProtocol, "unpacket") or overrides(self, DefaultProtocol, "packet"):
            return None
        return NativePlan(split=None, reply="none", echo_identical=True)
