"""Connection: one accepted socket, owned as a plain fd by exactly one event loop."""
from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import EventLoop

OPEN, CLOSING, CLOSED = 0, 1, 2
_get_ident = threading.get_ident


class ConnectionClosed(ConnectionError):
    """send() (or shutdown_write()) on a connection that is closed or closing."""


class Connection:
    """A client connection.  Thread-safe: send(), close() and shutdown_write().

    Output is queued and written at the end of the loop turn, one sendmsg for all of it; what
    the kernel does not take is copied once into a ring and written as the socket drains.
    """

    __slots__ = ("_fd", "_loop", "_state", "_parts", "_out", "_in", "_last", "_peer", "_local",
                 "_shut", "_paused", "_error", "_reason", "_tls", "context", "protocol_state")

    def __init__(self, loop: EventLoop, fd: int, now: float) -> None:
        self._fd = fd
        self._loop = loop
        self._state = OPEN
        self._parts: list[Any] | None = None  # this turn's queued output, as (kind, a, b) triples
        self._out: Any = None                 # RingBuffer of unsent output, only while there is some
        self._in: Any = None                  # RingBuffer of unparsed input (leftovers), lazily
        self._last = now                      # last read or write, for idle_timeout
        self._peer: Any = None
        self._local: Any = None
        self._shut = 0                        # 1: FIN requested, 2: FIN sent
        self._paused = False                  # reading paused by backpressure
        self._error: BaseException | None = None
        self._reason = ""
        self._tls: Any = None                 # TlsSession when the server has an ssl context
        self.context: Any = None
        """Free for the user: per-connection state."""
        self.protocol_state: Any = None
        """Reserved for the Protocol (e.g. the WebSocket state machine)."""

    # -- output ---------------------------------------------------------------------------
    def send(self, data: Any) -> None:
        """Queue `data` (through the protocol's packet) for sending, from any thread, in order.

        Returns at once.  Raises ConnectionClosed once the connection is closing or closed.
        """
        if self._state or self._shut:
            raise ConnectionClosed(f"connection {self._fd} is closed")
        loop = self._loop
        if loop._thread_id == _get_ident():
            loop._send(self, data, True)
        else:
            loop._post_send(self, data, True)

    def send_raw(self, data: Any) -> None:
        """Queue bytes as they are, bypassing packet(): for Protocol authors (handshakes, pongs)."""
        if self._state or self._shut:
            raise ConnectionClosed(f"connection {self._fd} is closed")
        loop = self._loop
        if loop._thread_id == _get_ident():
            loop._send(self, data, False)
        else:
            loop._post_send(self, data, False)

    def close(self) -> None:
        """Close after queued output is flushed; on_close(conn, None) follows.  Idempotent."""
        if self._state:
            return
        loop = self._loop
        if loop._thread_id == _get_ident():
            loop._close(self, None, "local")
        else:
            loop._post(loop._close, self, None, "local")

    def shutdown_write(self) -> None:
        """Send FIN once queued output is flushed; reading goes on until the peer closes."""
        if self._state:
            raise ConnectionClosed(f"connection {self._fd} is closed")
        loop = self._loop
        if loop._thread_id == _get_ident():
            loop._shutdown_write(self)
        else:
            loop._post(loop._shutdown_write, self)

    # -- state ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True until close() is called or the connection is lost."""
        return self._state == OPEN

    @property
    def loop(self) -> EventLoop:
        """The event loop that owns this connection (`conn.loop.run_after(...)` runs there)."""
        return self._loop

    @property
    def fd(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return self._fd

    @property
    def peer_addr(self) -> Any:
        """What getpeername() returns: (host, port), an IPv6 4-tuple, or a unix path."""
        if self._peer is None:
            self._peer = self._sock_name(True)
        return self._peer

    @property
    def local_addr(self) -> Any:
        """What getsockname() returns."""
        if self._local is None:
            self._local = self._sock_name(False)
        return self._local

    def _sock_name(self, peer: bool) -> Any:
        """Looked up on first use (then cached): accept() pays nothing for it."""
        if self._fd < 0:
            return None
        s = socket.socket(fileno=self._fd)
        try:
            return s.getpeername() if peer else s.getsockname()
        except OSError:
            return None
        finally:
            s.detach()

    @property
    def pending_write(self) -> int:
        """Bytes queued in pygev and not yet taken by the kernel."""
        return self._loop._pending_write(self)

    @property
    def pending_read(self) -> int:
        """Bytes received and buffered in pygev, not yet consumed by the protocol."""
        return len(self._in) if self._in is not None else 0

    def __repr__(self) -> str:
        state = ("open", "closing", "closed")[self._state]
        return f"<Connection fd={self._fd} {state}>"
