"""Handler: the user's callbacks.  Every method is optional."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import Connection
    from .server import Server


class Handler:
    """Subclass and override what you need; the defaults do nothing.

    All callbacks run on the connection's event-loop thread.  An exception raised by one is
    logged at ERROR and closes that connection (on_close receives the exception).
    """

    def on_start(self, server: Server) -> None:
        """Once per serving process (each worker too), on the first loop's thread before it
        serves: open pools, load data.  An exception here fails `start()`."""

    def on_stop(self, server: Server) -> None:
        """Once per serving process, at stop, after the last connection closed (the loops have
        finished: nothing can be sent any more)."""

    def on_connect(self, conn: Connection) -> None:
        """A connection was accepted, or a dial (`loop.connect`) connected (before any data)."""

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

    def on_high_water(self, conn: Connection) -> None:
        """conn's unsent output passed `write_high_water` (pygev stops reading conn until it
        drains): a proxy pauses the connection that feeds conn.  Runs at the next loop turn."""

    def on_drain(self, conn: Connection) -> None:
        """conn's unsent output, after on_high_water, fell to `write_low_water` (pygev reads
        conn again): resume what on_high_water paused.  Runs at the next loop turn."""

    def on_close(self, conn: Connection, error: BaseException | None) -> None:
        """The connection closed: error is None for a clean close, else what closed it.
        A dial that failed gets only this call (ConnectionRefusedError, TimeoutError, ...)."""
