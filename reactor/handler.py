"""Handler: the user's callbacks.  Every method is optional."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import Connection


class Handler:
    """Subclass and override what you need; the defaults do nothing.

    All callbacks run on the connection's event-loop thread.  An exception raised by one is
    logged at ERROR and closes that connection (on_close receives the exception).
    """

    def on_connect(self, conn: Connection) -> None:
        """A connection was accepted (before any data)."""

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        """A message arrived; return a reply (sent through the protocol) or None.

        `data` is `bytes` for messages shorter than the server's `view_threshold` (4 KiB by
        default) and a memoryview over the read buffer for longer ones, valid until this call
        returns: keep `bytes(data)` if you need it later.  Returning `data` itself echoes it
        without a copy.  A reply must be bytes-like (str only where the protocol takes text).
        """
        return None

    def on_eof(self, conn: Connection) -> bool | None:
        """The peer half-closed (sent FIN).  Return True to keep the connection open for
        sending - replies from timers or threads still go out; close it yourself (or let
        idle_timeout do it).  Default: close once queued output is flushed."""
        return None

    def on_close(self, conn: Connection, error: BaseException | None) -> None:
        """The connection closed: error is None for a clean close, else what closed it."""
