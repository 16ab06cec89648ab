"""How connections end: graceful close, abort, the close callbacks, the lingering drain, and the
deadlines that end a connection (idle, unfinished phases, a stalled flush, stop).

Rules (each written where it is carried out below):
- close(): the connection becomes CLOSING and dirty; sends raise ConnectionClosed from now on,
  but the reply returned by the call that closed it still goes out.  At the flush, after that
  reply, the goodbye is said (`goodbye`): the protocol's (`Protocol.closing`: a WebSocket close
  frame) for closes of our own ("local", "idle", "stop", a PeerTimeout), then TLS close_notify;
  then what is queued is written, and `after_write` runs only once pg_flush has returned.
- after_write(): a requested FIN is sent; a CLOSING connection is finished.
- finish(): counts, callbacks (protocol.connection_lost, then Handler.on_close, exactly once,
  while the fd is still open so addresses can be read), then the fd: closed at once when the
  peer already sent FIN (or on abort), else shut for writing and left to drain: PG_F_DISCARD
  reads and drops its input until the peer's FIN or LINGER_DRAIN seconds.  Closing a socket
  with unread input sends an RST, and Linux then discards replies still in the client's
  receive queue: the drain is what makes "flushed" mean "delivered" (nginx's lingering close).
- abort(): a reset or an output error: no flush, no goodbye, no drain.
- A peer FIN (peer_eof) stops reading; `Handler.on_eof` returning True keeps the connection
  open for sending, otherwise it closes as close() would, after its queued output - and after
  its pending deferred replies (deferred.py), the messages waiting behind them handled first.
  close() also waits for pending deferred replies (not for waiting messages), at most LINGER
  seconds without progress; stop, errors, timeouts and resets cancel them.
- stop: every connection closes with reason "stop"; queued output is flushed for at most the
  stop timeout (STOP_LIMIT for timeout=None, so a reader that keeps trickling cannot hold
  stop() forever), a flush making no progress for LINGER seconds is dropped before that.
"""
from __future__ import annotations

import errno
import logging
import os
from time import monotonic
from typing import TYPE_CHECKING

from ._native import F_DISCARD, KIND_CONN, lib
from .callbacks import handler_of, protocol_of
from .connection import CLOSED, CLOSING, OPEN, Connection
from .errors import PeerTimeout, ProtocolError, close_reason

if TYPE_CHECKING:
    from .loop import EventLoop

log = logging.getLogger("reactor.loop")

LINGER = 5.0                # a closing connection that makes no write progress this long is dropped
LINGER_DRAIN = 2.0          # after our FIN, input is read and dropped this long at most
STOP_LIMIT = 30.0           # stop(timeout=None) flushes for this long at most, progress or not
_RESET = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT)
_SERVER_SIDE = ("local", "idle", "stop")    # closes that say goodbye (protocol.closing, close_notify)


class Closer:
    """The ending side of one event loop (loop thread only)."""

    def __init__(self, loop: EventLoop) -> None:
        self._loop = loop
        opts = loop.server.options
        self._idle = opts.idle_timeout
        self._handshake_timeout = opts.handshake_timeout
        self._frame_timeout = opts.frame_timeout
        self._on_eof = getattr(loop.handler, "on_eof", None)
        self.lingering: set[Connection] = set()    # closing, output waiting for the socket
        self.draining: dict[int, float] = {}       # fd -> when its drain ends
        self.closed_by_reason: dict[str, int] = {}
        self.stop_deadline: float | None = None

    # ------------------------------------------------------------------------------------
    # what closes a connection
    # ------------------------------------------------------------------------------------
    def fail(self, conn: Connection, exc: BaseException) -> None:
        """User code raised: log it with its traceback and close only this connection."""
        log.error("handler error on %r, closing it", conn, exc_info=exc)
        self.close(conn, exc, "error")

    def bad_input(self, conn: Connection, reason: str, exc: BaseException | None = None) -> None:
        log.warning("closing %r: bad input: %s", conn, reason)
        self.close(conn, exc if exc is not None else ProtocolError(reason), "bad_input")

    def peer_eof(self, conn: Connection) -> None:
        """The peer half-closed.  Handler.on_eof decides: True keeps the connection open for
        sending (closed later by the handler, idle_timeout or stop); else it closes once
        queued output is flushed."""
        if conn._eof or conn._state != OPEN:
            return
        conn._eof = True
        self._loop.update_interest(conn)
        keep = None
        on_eof = self._on_eof if conn._side is None else conn._side.on_eof
        if on_eof is not None:
            try:
                keep = on_eof(conn)
            except Exception as exc:
                self.fail(conn, exc)
                return
        if not keep:
            if conn._held is not None:
                conn._held.close_when_done()      # replies still coming: they go out first
            else:
                self.close(conn, None, "peer")

    def close(self, conn: Connection, error: BaseException | None, reason: str) -> None:
        """Graceful close: stop reading, say goodbye (protocol, TLS), flush, then finish."""
        if conn._state != OPEN:
            return
        loop = self._loop
        reason = close_reason(error, reason)
        hook = reason if reason in _SERVER_SIDE or isinstance(error, PeerTimeout) else None
        tls = conn._tls is not None and reason != "bad_input"
        if hook is not None or tls:
            conn._bye = (hook, tls)               # said by the flush, after this turn's replies
        conn._state = CLOSING
        conn._error = error
        conn._reason = reason
        held = conn._held
        if held is not None:
            if reason == "local":         # close() after Futures: their replies go out first,
                held.waiting.clear()      # nothing more is read; no progress for LINGER: dropped
                self.lingering.add(conn)
            else:
                self.drop_held(conn)
        loop.update_interest(conn)
        loop.out.mark(conn)           # the flush writes what is queued, then finishes

    def drop_held(self, conn: Connection) -> None:
        """Cancel a connection's pending deferred replies (deferred.py): nothing is sent for them."""
        held = conn._held
        if held is not None:
            held.cancel()
            conn._held = None
            conn._q = None

    def goodbye(self, conn: Connection) -> None:
        """At the flush of a closing connection, after the replies of its last turn: the
        protocol's goodbye (a WebSocket close frame), then TLS close_notify."""
        bye = conn._bye
        conn._bye = None
        if bye is None:
            return
        hook, tls = bye
        loop = self._loop
        if hook is not None:
            conn._state = OPEN                    # send_raw() works inside the hook
            protocol = protocol_of(loop, conn)
            try:
                protocol.closing(conn, hook)
            except Exception:
                log.exception("%s.closing raised", type(protocol).__name__)
            finally:
                conn._state = CLOSING
        if tls and conn._tls is not None:
            loop.out.seal_pending(conn)           # the replies are encrypted before close_notify
            loop.out.wire(conn, conn._tls.shutdown())

    def abort(self, conn: Connection, error: BaseException | None, reason: str) -> None:
        """Close now, dropping unsent output (the peer is gone or broken)."""
        if conn._state == CLOSED:
            return
        if conn._state == OPEN:
            conn._error = error
            conn._reason = reason
        conn._state = CLOSING
        self._finish(conn, linger=False)

    def abort_errno(self, conn: Connection, err: int) -> None:
        """A socket call failed with `err`: close now with the OSError (a reset, or another error)."""
        self.abort(conn, OSError(err, os.strerror(err)), "reset" if err in _RESET else "error")

    def after_write(self, conn: Connection) -> None:
        """Everything queued has been written: carry out a pending FIN or close."""
        if conn._out is not None and len(conn._out):
            return
        if conn._shut == 1:
            conn._shut = 2
            lib.pg_shutdown_write(conn._fd)
        if conn._state == CLOSING and conn._held is None:     # pending replies first
            self._finish(conn, linger=True)

    def count(self, reason: str) -> None:
        self.closed_by_reason[reason] = self.closed_by_reason.get(reason, 0) + 1

    def _finish(self, conn: Connection, linger: bool) -> None:
        if conn._state == CLOSED:
            return
        loop = self._loop
        conn._state = CLOSED
        fd = conn._fd
        loop.conns.pop(fd, None)
        self.lingering.discard(conn)
        self.drop_held(conn)                      # pending Futures: cancelled, results dropped
        conn._out = conn._in = conn._q = conn._parts = None
        self.count(conn._reason)
        if conn._side is None:
            loop.server.admission.released()
        else:
            loop.dialer.finished(conn)
        error = conn._error
        # Addresses outlive the socket (like asyncio's cached peername).  Callbacks run while
        # the fd is open; nothing can be sent.
        if conn._peer is None:
            conn._peer = loop.addresses.peer(fd)
        if conn._local is None:
            conn._local = loop.addresses.local(fd)
        protocol, handler = protocol_of(loop, conn), handler_of(loop, conn)
        try:
            protocol.connection_lost(conn, error)
        except Exception:
            log.exception("%s.connection_lost raised", type(protocol).__name__)
        try:
            handler.on_close(conn, error)
        except Exception:
            log.exception("%s.on_close raised", type(handler).__name__)
        conn._fd = -1          # before the number can be reused by another accept
        if linger and not conn._eof and not self.stop_deadline_passed():
            if conn._shut != 2:
                lib.pg_shutdown_write(fd)
            loop.set_flag(fd, F_DISCARD)
            loop.poller.modify(fd, KIND_CONN, True, False)
            self.draining[fd] = loop.now + LINGER_DRAIN
        else:
            loop.set_flag(fd, 0)
            loop.poller.close_fd(fd)

    def drained(self, fd: int) -> None:
        """A lingering fd saw the peer's FIN (or an error), or its time is up: close it."""
        if self.draining.pop(fd, None) is not None:
            self._loop.set_flag(fd, 0)
            self._loop.poller.close_fd(fd)

    # ------------------------------------------------------------------------------------
    # deadlines
    # ------------------------------------------------------------------------------------
    def sweep(self) -> None:
        """Periodic: idle timeouts, phase deadlines, stalled flushes, drains, quiet rings."""
        loop = self._loop
        now = loop.now
        idle = self._idle
        for conn in list(loop.conns.values()):
            if conn._state == OPEN:
                deadline = conn._deadline
                if deadline is not None and now >= deadline:
                    tls = conn._tls
                    if tls is not None and not tls.ready:
                        self.close(conn, PeerTimeout("TLS handshake not finished within "
                                                     f"{self._handshake_timeout} s",
                                                     "handshake_timeout"), "timeout")
                    else:
                        self.close(conn, PeerTimeout("a message begun was not finished within "
                                                     f"{self._frame_timeout} s", "frame_timeout"),
                                   "timeout")
                elif idle is not None and now - conn._last >= idle:
                    self.close(conn, PeerTimeout(f"idle for {idle} s", "idle"), "idle")
                elif conn._in is not None and not len(conn._in) and now - conn._last >= 1.0:
                    conn._in = None
        for conn in list(self.lingering):
            if now - conn._last >= LINGER or self.stop_deadline_passed():
                self.abort(conn, conn._error, conn._reason)
        for fd, until in list(self.draining.items()):
            if now >= until:
                self.drained(fd)

    def sweep_period(self) -> float:
        return 1.0 if self._idle is None else max(0.05, min(0.5, self._idle / 2))

    # ------------------------------------------------------------------------------------
    # stop
    # ------------------------------------------------------------------------------------
    def begin_stop(self, timeout: float | None) -> None:
        self.stop_deadline = monotonic() + (STOP_LIMIT if timeout is None else timeout)
        for conn in list(self._loop.conns.values()):
            if conn._state != OPEN and conn._held is not None:
                self.drop_held(conn)              # stop cancels what close() was waiting for
                self._loop.out.mark(conn)
            self.close(conn, None, "stop")

    def stop_deadline_passed(self) -> bool:
        return self.stop_deadline is not None and monotonic() >= self.stop_deadline

    def stopped(self) -> bool:
        """True when nothing is left: every connection finished and every drain closed (at the
        stop deadline what is left is dropped)."""
        loop = self._loop
        if self.stop_deadline_passed():
            for conn in list(loop.conns.values()):
                self.abort(conn, conn._error, conn._reason or "stop")
            for fd in list(self.draining):
                self.drained(fd)
        return not loop.conns and not self.draining


__all__ = ["LINGER", "LINGER_DRAIN", "STOP_LIMIT", "Closer"]
