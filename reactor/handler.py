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
        """A message arrived; return a reply (sent through the protocol's packet) or None.

        With the default protocol `data` is a memoryview over the loop's read buffer, valid
        until this call returns; returning it (or a slice of it) echoes it without a copy.
        """
        return None

    def on_close(self, conn: Connection, error: BaseException | None) -> None:
        """The connection closed: error is None for a clean close, else what closed it."""
