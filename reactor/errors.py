"""The exceptions pygev raises or hands to `on_close`, and the metrics label of each.

Every exception that closes a connection may carry a `reason`: the label of the close in the
`pygev_connections_closed{reason}` metric.  Classes set a default; `PeerTimeout` takes one per
instance, so each phase that waits on the peer (an upgrade, a TLS handshake, a frame body)
names itself.
"""
from __future__ import annotations


class ConnectionClosed(ConnectionError):
    """send() (or shutdown_write()) on a connection that is closed or closing."""


class ProtocolError(ValueError):
    """Raised by a Protocol on bad input: the server logs the reason at WARNING and closes
    only that connection (queued output, such as a close frame, is flushed first)."""

    reason = "bad_input"


class PeerTimeout(TimeoutError):
    """The peer did not finish a phase in time (idle, handshake, upgrade, a frame body).

    `reason` labels the close in metrics, e.g. "idle", "handshake_timeout", "frame_timeout".
    """

    def __init__(self, message: str, reason: str = "timeout") -> None:
        super().__init__(message)
        self.reason = reason


class OutputLimitExceeded(BufferError):
    """A connection's unsent output passed the server's `write_limit` (a peer that does not read
    while others keep sending to it): the connection is dropped, its output with it."""

    reason = "write_limit"


def close_reason(error: BaseException | None, default: str) -> str:
    """The metrics label for a close caused by `error` (its `reason`, else `default`)."""
    reason = getattr(error, "reason", None)
    return reason if isinstance(reason, str) else default


__all__ = ["ConnectionClosed", "OutputLimitExceeded", "PeerTimeout", "ProtocolError", "close_reason"]
