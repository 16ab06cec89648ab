"""Protocol: how a connection's byte stream becomes messages (unpacket) and back (packet).

The server calls `unpacket(conn, buffer)` repeatedly while it returns a `(ctx, data)` pair;
each pair goes to `Handler.on_message(conn, ctx, data)`.  Whatever the handler returns (or
hands to `conn.send`) goes through `packet(conn, data)` on the connection's loop thread before
it is written.  `buffer` offers the RingBuffer reading API (len, peek, peek_all, peek_uint,
retrieve, retrieve_all, read, read_into, virtual_*) over the connection's unread bytes; bytes
left unconsumed are kept for the next call.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ringbuf import BufferReader

    from .connection import Connection


class ProtocolError(ValueError):
    """Raised by a Protocol on bad input: the server logs the reason at WARNING and closes
    only that connection (queued output, such as a close frame, is flushed first)."""


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

    def connection_made(self, conn: Connection) -> None:
        """Called on the loop thread when a connection is accepted, before Handler.on_connect."""

    def connection_lost(self, conn: Connection, error: BaseException | None) -> None:
        """Called on the loop thread when a connection closes, before Handler.on_close."""


class DefaultProtocol(Protocol):
    """Pass-through: every read is handed to on_message as one memoryview, without a copy.

    The loop recognises this class and skips the unpacket/packet calls entirely.
    """
