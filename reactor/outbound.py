"""A dialed connection (`loop.connect`): its own handler and protocol, its reads and its sends.

Rules:
- An accepted connection is served by its loop's handler and protocol, bound once per loop for
  the hot path.  A dialed one may have others, so it never takes the hot path: its fd carries
  PG_F_PYREAD for its whole life, the native poll only reports it readable, and `Side.read`
  reads it (into its input ring, or through TLS) and runs its protocol's unpacket and its
  handler.  Its output is framed here (`protocol.packet`) and queued as raw bytes
  (`Output.raw`, which encrypts), so the loop's native framing never sees it.  Writing,
  backpressure, closing, idle and frame timeouts are the accepted connections' own code.
- Until the dial connects the connection is OPEN but not `connected`: `send()` and
  `shutdown_write()` are kept in order (`early`, counted in pending_write) and carried out,
  after `protocol.connection_made`, before `on_connect` runs.  `close()` ends the dial: only
  `on_close(conn, error)` runs, as for a failed dial.
- Sends from other threads are copied at once and posted to the loop, like accepted ones.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from ringbuf import RingBuffer

from .connection import CLOSED, OPEN, Connection, ConnectionClosed
from .deferred import is_deferred
from .output import bytes_like
from .unpacking import unpack, unpack_ring

if TYPE_CHECKING:
    from .dialing import Dial
    from .loop import EventLoop

log = logging.getLogger("reactor.loop")
_get_ident = threading.get_ident


def _copy(data: Any) -> Any:
    """What a send from another thread keeps: the caller may reuse its buffer at once."""
    if type(data) is bytes or type(data) is str:
        return data
    try:
        return memoryview(data).tobytes()
    except TypeError:
        return data         # not bytes-like: the protocol's packet() decides (e.g. a message)


def _size(data: Any) -> int:
    return len(data) if isinstance(data, (bytes, str)) else 0


class Side:
    """The dialed side of one connection: its callbacks, its dial, what waits for the connect."""

    __slots__ = ("handler", "protocol", "on_eof", "dial", "up", "early", "early_bytes", "shut",
                 "posted", "lock", "read_max", "view_min", "max_pending", "source", "passthrough")

    def __init__(self, handler: Any, protocol: Any, read_max: int, view_threshold: int | None) -> None:
        self.handler = handler
        self.protocol = protocol
        self.on_eof = getattr(handler, "on_eof", None)
        self.dial: Dial | None = None
        self.up = False                     # connected (on_connect may run)
        self.early: list[tuple[Any, bool]] = []     # sends before the connect, in order
        self.early_bytes = 0
        self.shut = False                   # shutdown_write() asked for before the connect
        self.posted = 0                     # bytes sent from other threads, not yet queued
        self.lock = threading.Lock()
        self.read_max = read_max
        self.view_min = (1 << 62) if view_threshold is None else view_threshold
        self.max_pending = getattr(protocol, "max_pending", 16 << 20)
        self.source = f"{type(handler).__qualname__}.on_message"
        plan = protocol.native_plan()
        # DefaultProtocol as it is: each read is one message (bytes), replies go out unframed
        self.passthrough = plan is not None and plan.split is None and plan.reply == "none"

    # ------------------------------------------------------------------------------------
    # output (loop thread)
    # ------------------------------------------------------------------------------------
    def send(self, conn: Connection, data: Any, packet: bool) -> None:
        if not self.up:
            data = _copy(data)
            self.early.append((data, packet))
            self.early_bytes += _size(data)
            return
        self.queue(conn, data, packet, "send()")

    def queue(self, conn: Connection, data: Any, packet: bool, source: str) -> None:
        """Frame `data` with this connection's protocol and queue it as raw bytes.  A Future,
        or a reply while one is pending, waits in order (deferred.py; framed when released)."""
        if (type(data) is not bytes and is_deferred(data)) or (packet and conn._held is not None):
            conn._loop.deferrals.hold(conn, data)
            return
        if packet and not self.passthrough:
            data = self.protocol.packet(conn, data)
            if data is None:
                return
        conn._loop.send(conn, bytes_like(data, source), False)

    def send_posted(self, conn: Connection, data: Any, packet: bool, size: int) -> None:
        with self.lock:
            self.posted -= size
        if conn._state == OPEN and not conn._shut and not self.shut:
            try:
                self.send(conn, data, packet)
            except Exception as exc:
                if self.up:
                    conn._loop.closer.fail(conn, exc)
                else:
                    log.error("send() before the connect failed on %r", conn, exc_info=exc)

    def replay(self, conn: Connection) -> None:
        """Connected: what was sent before goes out now, in order (then a pending FIN)."""
        early, self.early, self.early_bytes = self.early, [], 0
        for data, packet in early:
            self.queue(conn, data, packet, "send()")
        if self.shut:
            conn._loop.shutdown_write(conn)

    # ------------------------------------------------------------------------------------
    # input (loop thread): the native poll said readable
    # ------------------------------------------------------------------------------------
    def read(self, conn: Connection) -> None:
        loop = conn._loop
        tls = conn._tls
        if tls is None and self.passthrough:
            self._read_bytes(conn)
            return
        if tls is None:
            ring = conn._in
            if ring is None:
                ring = conn._in = RingBuffer(self.read_max)
            res = ring._read_from(conn._fd, self.read_max)
            if res > 0:
                loop.rx += res
                self._unpack_ring(conn)
            elif res == 0:
                loop.closer.peer_eof(conn)
            elif not loop.would_block(-res):
                loop.closer.abort_errno(conn, -res)
            return
        data = self._read_os(conn)
        if data is None:
            return
        try:
            plain = tls.feed(data)
        except Exception as exc:            # ssl.SSLError: bad records, a certificate refused
            loop.out.wire(conn, tls.take_output())
            loop.closer.bad_input(conn, f"TLS error: {exc}", exc)
            return
        out = tls.take_output()
        if out:
            loop.out.wire(conn, out)
        if tls.ready and conn._deadline is not None and not conn.pending_read:
            conn._deadline = None               # the handshake is done
        if plain:
            ring = conn._in
            if ring is None:
                ring = conn._in = RingBuffer(max(len(plain), self.read_max))
            ring.write(plain)
            self._unpack_ring(conn)
        if tls.closed_by_peer and conn._state == OPEN:
            loop.closer.peer_eof(conn)

    def _read_os(self, conn: Connection) -> bytes | None:
        """One os.read() of the socket (TLS, or DefaultProtocol's bytes); None when it would
        block, or when it ended the connection (EOF, error: handed to the closer)."""
        loop = conn._loop
        try:
            data = os.read(conn._fd, self.read_max)
        except BlockingIOError:
            return None
        except OSError as exc:
            loop.closer.abort_errno(conn, exc.errno or 0)
            return None
        if not data:
            loop.closer.peer_eof(conn)
            return None
        loop.rx += len(data)
        return data

    def _read_bytes(self, conn: Connection) -> None:
        """DefaultProtocol without TLS: one read, one message, as bytes (nothing is kept)."""
        loop = conn._loop
        data = self._read_os(conn)
        if data is None:
            return
        try:
            res = self.handler.on_message(conn, None, data)
            if res is not None:
                self.queue(conn, res, False, self.source)
        except Exception as exc:
            loop.closer.fail(conn, exc)

    def _unpack_ring(self, conn: Connection) -> None:
        if not unpack_ring(conn, self._unpack, self.read_max):
            return
        if conn._state != OPEN:
            return
        loop = conn._loop
        left = len(conn._in)
        if not left:
            if conn._tls is None or conn._tls.ready:
                conn._deadline = None
        elif left > self.max_pending:
            loop.closer.bad_input(conn, f"{left} unparsed bytes exceed the protocol's "
                                  f"max_pending ({self.max_pending})")
        elif conn._deadline is None:
            conn._deadline = loop.now + loop.frame_timeout

    def resume(self, conn: Connection) -> None:
        """Deferred replies' gate opened: parse what waits in the input ring."""
        if conn._in is not None and len(conn._in) and conn._state == OPEN:
            self._unpack_ring(conn)

    def _unpack(self, conn: Connection, buf: Any) -> None:
        protocol = self.protocol
        unpack(conn, buf, protocol, protocol.unpacket, self.handler.on_message, self._reply,
               self.source, self.view_min)

    def _reply(self, conn: Connection, res: Any, source: str) -> None:
        self.queue(conn, res, True, source)


class OutboundConnection(Connection):
    """A connection made by `loop.connect()`: usable at once; `connected` once the dial
    succeeded.  Its handler and protocol are the ones it was dialed with."""

    __slots__ = ()

    def __init__(self, loop: EventLoop, side: Side) -> None:
        super().__init__(loop, -1, 0.0)
        self._side = side

    def send(self, data: Any) -> None:
        """Queue `data` through this connection's protocol, from any thread, in order; before
        the dial connected it waits (in pending_write) and goes out first once it does."""
        side = self._side
        if self._state or self._shut or side.shut:
            raise ConnectionClosed(f"{self!r} is closed")
        loop = self._loop
        if side.passthrough and side.up and loop.thread_id == _get_ident():
            loop.send(self, data, False)        # DefaultProtocol: nothing to frame
            return
        self._post(data, True)

    def send_raw(self, data: Any) -> None:
        """Queue bytes as they are, bypassing packet() (for Protocol authors)."""
        side = self._side
        if self._state or self._shut or side.shut:
            raise ConnectionClosed(f"{self!r} is closed")
        self._post(data, False)

    def _post(self, data: Any, packet: bool) -> None:
        side = self._side
        loop = self._loop
        if loop.thread_id == _get_ident():
            side.send(self, data, packet)
            return
        if type(data) is not bytes and type(data) is not str:
            try:
                data = memoryview(data).tobytes()
            except TypeError:
                if not packet:      # send(): the protocol's packet() decides on the loop
                    raise TypeError(f"send_raw() needs bytes-like data, not "
                                    f"{type(data).__name__}") from None
        size = _size(data)
        with side.lock:
            side.posted += size
        loop.call_soon(side.send_posted, self, data, packet, size)

    def close(self, error: BaseException | None = None) -> None:
        """Close (see Connection.close); before the dial connected it ends the dial and only
        on_close(conn, error) runs."""
        if self._state:
            return
        loop = self._loop
        if self._side.up:
            super().close(error)
        else:
            loop.call_here(loop.dialer.abandon, self, error)

    def shutdown_write(self) -> None:
        """Send FIN once queued output is flushed (after the connect, if it is not up yet)."""
        if self._state:
            raise ConnectionClosed(f"{self!r} is closed")
        loop = self._loop
        loop.call_here(self._shutdown_here)

    def _shutdown_here(self) -> None:
        side = self._side
        if side.up:
            self._loop.shutdown_write(self)
        elif self._state == OPEN:
            side.shut = True

    @property
    def connected(self) -> bool:
        """True once the dial connected, until close() or the connection is lost."""
        return self._state == OPEN and self._side.up

    @property
    def pending_write(self) -> int:
        """Bytes queued in pygev and not yet taken by the kernel (also those sent before the
        connect)."""
        side = self._side
        loop = self._loop
        n = side.early_bytes + side.posted + side.protocol.pending_output(self)
        if self._state != CLOSED and self._fd >= 0:
            n += loop.out.pending(self)
        if self._tls is not None:
            n += self._tls.pending
        return n

    @property
    def peer_addr(self) -> Any:
        """The address being dialed, then what getpeername() returned once connected; after a
        failed dial the last address tried; None while the name is being resolved."""
        return self._peer

    @property
    def local_addr(self) -> Any:
        """What getsockname() returned once connected, else None."""
        return self._local


__all__ = ["OutboundConnection", "Side"]
