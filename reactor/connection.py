"""Connection: one socket, owned as a plain fd by exactly one event loop.

The fields with a leading underscore are the loop's bookkeeping, written only on the loop's
thread by the loop modules (loop.py, reading.py, output.py, closing.py, deferred.py): a
connection is their shared record, the way a file descriptor table entry is the kernel's.
Users see the properties and methods below, which are safe from any thread where they say so.

States: OPEN -> CLOSING (close() or stop(): queued output still goes out, then FIN) -> CLOSED
(callbacks ran; the fd is closed or lingering to drain what the peer still sends).  A reset or
an output error goes straight to CLOSED, dropping what was queued.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .errors import ConnectionClosed
from .filesend import sendfile as _sendfile

if TYPE_CHECKING:
    from .loop import EventLoop

OPEN, CLOSING, CLOSED = 0, 1, 2
_get_ident = threading.get_ident

__all__ = ["CLOSED", "CLOSING", "OPEN", "Connection", "ConnectionClosed"]


class Connection:
    """A connection.  Thread-safe: send(), send_raw(), close() and shutdown_write().

    Output is queued and written at the end of the loop turn, one sendmsg for all of it; what
    the kernel does not take is copied once into a ring and written as the socket drains.
    """

    __slots__ = ("_fd", "_loop", "_state", "_q", "_parts", "_dirty", "_out", "_in", "_last",
                 "_peer", "_local", "_shut", "_paused", "_eof", "_error", "_reason", "_tls",
                 "_deadline", "_posted", "_bye", "_held", "_side", "context", "protocol_state")

    ordered = True
    """Replies keep their order (a stream); datagram peers say False."""

    def __init__(self, loop: EventLoop, fd: int, now: float) -> None:
        self._fd = fd
        self._loop = loop
        self._state = OPEN
        self._q: Any = None                   # this turn's replies (a list; the deferred.Chain while held)
        self._parts: list[int] | None = None  # this turn's sealed output, as (kind, a, b) triples
        self._dirty = False                   # in the loop's list of connections to flush
        self._out: Any = None                 # RingBuffer of unsent output (a filesend.SendQueue
                                              # once a file is queued), only while there is some
        self._in: Any = None                  # RingBuffer of unparsed input (leftovers), lazily
        self._last = now                      # last read or write, for idle_timeout
        self._peer: Any = None
        self._local: Any = None
        self._shut = 0                        # 1: FIN requested, 2: FIN sent
        self._paused = 0                      # bits: 1 backpressure, 2 pause_reading(), 4 replies pending
        self._eof = False                     # the peer sent FIN
        self._error: BaseException | None = None
        self._reason = ""
        self._tls: Any = None                 # TlsSession when the server has an ssl context
        self._deadline: float | None = None   # a phase that waits on the peer must end by then
        self._posted = 0                      # bytes sent from other threads, not yet queued
        self._bye: Any = None                 # (protocol goodbye reason, TLS close_notify) due
        self._held: Any = None                # deferred.Chain while a Future reply is pending
        self._side: Any = None                # outbound.Side of a dialed connection; None: accepted
        self.context: Any = None
        """Free for the user: per-connection state."""
        self.protocol_state: Any = None
        """Reserved for the Protocol (e.g. the WebSocket state machine)."""

    # -- output ---------------------------------------------------------------------------
    def send(self, data: Any) -> None:
        """Queue `data` (through the protocol's packet) for sending, from any thread, in order.

        Returns at once; the bytes are copied (or are immutable) when this returns, so the
        caller may reuse its buffer.  Raises ConnectionClosed once the connection is closing,
        closed or shut for writing.
        """
        if self._state or self._shut:
            raise ConnectionClosed(f"{self!r} is closed")
        loop = self._loop
        if loop.thread_id == _get_ident():
            loop.send(self, data, True)
        else:
            loop.post_send(self, data, True)

    def send_raw(self, data: Any) -> None:
        """Queue bytes as they are, bypassing packet(): for Protocol authors (handshakes, pongs)."""
        if self._state or self._shut:
            raise ConnectionClosed(f"{self!r} is closed")
        loop = self._loop
        if loop.thread_id == _get_ident():
            loop.send(self, data, False)
        else:
            loop.post_send(self, data, False)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> None:
        """Queue `count` bytes (None: to the end) of `file` (a file object or a descriptor)
        from `offset`, after everything queued, from any thread.  Sent by sendfile(2) without
        passing through Python (TLS: read and encrypted in chunks); the bytes count in
        pending_write until sent.  The file is not closed (pygev sends from a duplicate of its
        descriptor, so it may be closed at once).  Bad arguments, a directory, a closed file or
        a region past the end of the file: TypeError / ValueError naming the argument.  A file
        truncated while queued aborts the connection (OSError ENODATA) after what exists."""
        if self._state or self._shut:
            raise ConnectionClosed(f"{self!r} is closed")
        _sendfile(self, file, offset, count)

    def close(self, error: BaseException | None = None) -> None:
        """Close after queued output is flushed (a reply returned by the on_message that calls
        this still goes out); on_close(conn, error) follows.  Idempotent, any thread.

        `error` (default None) is what on_close receives; its `reason` attribute, if any,
        labels the close in metrics (see reactor.PeerTimeout)."""
        if self._state:
            return
        loop = self._loop
        if loop.thread_id == _get_ident():
            loop.closer.close(self, error, "local")
        else:
            loop.call_soon(loop.closer.close, self, error, "local")

    def shutdown_write(self) -> None:
        """Send FIN once queued output is flushed; reading goes on until the peer closes.
        Later sends raise ConnectionClosed."""
        if self._state:
            raise ConnectionClosed(f"{self!r} is closed")
        loop = self._loop
        if loop.thread_id == _get_ident():
            loop.shutdown_write(self)
        else:
            loop.call_soon(loop.shutdown_write, self)

    def pause_reading(self) -> None:
        """Stop reading from this connection until resume_reading() (loop thread or any)."""
        self._loop.call_here(self._loop.set_reading, self, False)

    def resume_reading(self) -> None:
        """Undo pause_reading()."""
        self._loop.call_here(self._loop.set_reading, self, True)

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
        """What getpeername() returns: (host, port), an IPv6 4-tuple, or a unix path.  Kept
        after close, whatever closed the connection (taken from accept's result)."""
        if self._peer is None and self._fd >= 0:
            self._peer = self._loop.addresses.peer(self._fd)
        return self._peer

    @property
    def local_addr(self) -> Any:
        """What getsockname() returns; kept after close."""
        if self._local is None and self._fd >= 0:
            self._local = self._loop.addresses.local(self._fd)
        return self._local

    @property
    def pending_write(self) -> int:
        """Bytes queued in pygev and not yet taken by the kernel: this turn's replies, the
        output ring, TLS records waiting for the handshake, and sends from other threads."""
        return self._loop.pending_write(self)

    @property
    def pending_read(self) -> int:
        """Bytes received and buffered in pygev, not yet consumed by the protocol."""
        return len(self._in) if self._in is not None else 0

    def __repr__(self) -> str:
        state = ("open", "closing", "closed")[self._state]
        peer = self.peer_addr
        if isinstance(peer, tuple):
            where = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        else:
            where = repr(peer) if peer else "?"
        return f"<Connection {where} fd={self._fd} {state}>"
