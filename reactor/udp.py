"""UDP: datagram sockets served by an event loop - each datagram is one message.

One `UdpEndpoint` per socket, owned by one loop.  It plugs into the loop at one seam: the
socket is registered with the poller as KIND_UDP, pg_poll reports it with a PG_R_UDP row
(readable | writable << 1), and the loop hands that row to `ready()`.  The TCP path never
sees a datagram.  Rules:

- Reading: `pg_udp_recv` (recvmmsg) takes up to UDP_BATCH datagrams per call into the
  endpoint's own slots (one of `read_buffer_size` bytes, at most 64 KiB, per datagram) and
  their senders' addresses; READS_PER_TURN calls at most per ready event (level-triggered: the
  rest comes next turn).  Handlers get each datagram as `bytes` (a copy: the slots are reused
  by the next call, so no view of them is ever handed out).
- A datagram longer than its slot is never truncated silently: MSG_TRUNC reports it, it is
  dropped, counted (`stats()["datagrams_dropped"]["too_long"]`) and logged at WARNING.
- Peers: a server socket keeps one `UdpPeer` (a Connection) per sender address while it is
  active: the same object, its `context` kept; a new address gets on_connect.  A peer quiet
  for `idle_timeout` (60 s when None) is closed with PeerTimeout (a TimeoutError); close()
  forgets it; stop() closes all.  `max_connections` caps the peers (datagrams of new senders
  over the cap are dropped, no on_connect).
- Writing: a reply (returned or send()) is one datagram to that peer, `b""` an empty one.
  Replies are queued and leave in one `pg_udp_send` (sendmmsg) after each batch of reads, or,
  for sends outside a read (timers, other threads), on the writable event that queueing arms.
  What the kernel does not take waits for writability; past `write_high_water` queued bytes
  the socket is not read until below `write_low_water`; past `write_limit` new datagrams are
  dropped (UDP may drop; memory stays bounded).  Queued datagrams count in `pending_write`.
- `dial_udp` gives a connected UDP socket's Connection (one peer, no addresses on the wire).
"""
from __future__ import annotations

import errno
import logging
import socket
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING, Any

from ._native import KIND_UDP, ffi, lib
from .connection import CLOSED, OPEN, Connection
from .deferred import is_deferred
from .errors import PeerTimeout
from .sockaddr import decode_sockaddr
from .udp_peer import UdpPeer, datagram

if TYPE_CHECKING:
    from .handler import Handler
    from .loop import EventLoop

log = logging.getLogger("reactor.udp")

UDP_BATCH = 64              # datagrams per recvmmsg call
READS_PER_TURN = 4          # recvmmsg calls per ready event at most
ADDR = lib.PG_UDP_ADDR      # bytes of one peer address entry
TRUNC = lib.PG_UDP_TRUNC
SLOT_MAX = 65536            # no UDP datagram is longer: a larger read_buffer_size truncates nothing
DEFAULT_IDLE = 60.0         # idle_timeout=None on a UDP server
MAX_DATAGRAM = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)

NETWORKS = ("udp", "udp4", "udp6")


def is_udp(network: str) -> bool:
    return network in NETWORKS


def bind_sockets(family: int, sockaddr: Any, count: int, reuse_port: bool) -> list[socket.socket]:
    """`count` UDP sockets bound to one address (SO_REUSEPORT when more than one: the kernel
    keeps each sender on one socket, hence on one loop)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reuse_port or count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            sock.setblocking(False)
            sockaddr = sock.getsockname()     # port 0: the others bind the real port
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class UdpEndpoint:
    """One UDP socket on one loop: its reads, its peers, its queued datagrams (loop thread
    only, except `post`)."""

    def __init__(self, loop: EventLoop, sock: socket.socket, handler: Handler, *,
                 idle: float | None, connected: bool, read_max: int, high: int, low: int,
                 limit: int, admission: Any = None) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.local = sock.getsockname()
        self.handler = handler
        self._on_message = handler.on_message
        self._source = f"{type(handler).__qualname__}.on_message"
        self.connected = connected
        self._admission = admission
        self._idle = idle
        self._max = MAX_DATAGRAM.get(self.family, 65507)
        self._high, self._low, self._limit = high, low, limit
        self.slot = slot = min(read_max, SLOT_MAX)
        raw = ffi.new_allocator(should_clear_after_alloc=False)
        self._buf = raw("char[]", slot * UDP_BATCH)
        self._mv = memoryview(ffi.buffer(self._buf))
        self._rows = ffi.new("int32_t[]", 2 * UDP_BATCH)
        self._rows_mv = memoryview(ffi.buffer(self._rows)).cast("i")
        self._addrs = ffi.NULL if connected else ffi.new("char[]", ADDR * UDP_BATCH)
        self._addrs_buf = None if connected else ffi.buffer(self._addrs)
        self._err = ffi.new("int *")
        self.peers: dict[bytes, UdpPeer] = {}
        self._out: list[bytes] = []
        self._out_peers: list[UdpPeer] = []
        self._out_bytes = 0
        self._reading = True
        self._writing = False
        self._in_read = False
        self._closed = False
        self._timer: Any = None
        self._warned = 0.0
        self.dropped = loop.datagrams_dropped

    # ------------------------------------------------------------------------------------
    # life
    # ------------------------------------------------------------------------------------
    def open(self) -> None:
        """Register with the loop (loop thread)."""
        loop = self.loop
        loop.datagrams[self.fd] = self
        loop.poller.add(self.fd, KIND_UDP)
        if self._idle is not None:
            period = max(0.05, min(1.0, self._idle / 2))
            self._timer = loop.run_every(period, self.expire)

    def stop(self) -> None:
        """Server stop: send what is queued (one try), close every peer, close the socket."""
        if self._closed:
            return
        self.flush()
        for peer in list(self.peers.values()):
            self.close_peer(peer, None, "stop")
        self.close()

    def close(self) -> None:
        """Unregister and close the socket (datagrams still queued are dropped and counted)."""
        if self._closed:
            return
        self._closed = True
        if self._out:
            self._drop("stop", len(self._out))
            self._out.clear()
            self._out_peers.clear()
            self._out_bytes = 0
        if self._timer is not None:
            self._timer.cancel()
        self.loop.datagrams.pop(self.fd, None)
        self.sock.close()           # closing the last descriptor removes it from the poller

    # ------------------------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------------------------
    def ready(self, flags: int) -> None:
        """The PG_R_UDP row: readable (1) and/or writable (2)."""
        if self._closed:
            return
        if flags & 1 and self._reading:
            self._in_read = True
            try:
                self._read()
            finally:
                self._in_read = False
        if self._out and not self._closed:
            self.flush()
        elif self._writing and not self._closed:
            self._interest(self._reading, False)

    def _read(self) -> None:
        recv = lib.pg_udp_recv
        fd, buf, slot, rows, addrs = self.fd, self._buf, self.slot, self._rows, self._addrs
        for _ in range(READS_PER_TURN):
            n = recv(fd, buf, slot, UDP_BATCH, rows, addrs)
            if n <= 0:
                if n < 0:
                    self._recv_error(-n)
                return
            self._dispatch(n)
            if n < UDP_BATCH or self._closed or not self._reading:
                return

    def _dispatch(self, n: int) -> None:
        rows = self._rows_mv[:2 * n].tolist()
        mv = self._mv
        slot = self.slot
        peers = self.peers
        on_message = self._on_message
        now = self.loop.now
        ab = self._addrs_buf[:ADDR * n] if self._addrs_buf is not None else None
        self.loop.rx += sum(rows[0::2])
        out_append = self._out.append
        peers_append = self._out_peers.append
        maxd, limit = self._max, self._limit
        for i in range(n):
            length = rows[2 * i]
            key = ab[i * ADDR:(i + 1) * ADDR] if ab is not None else b""
            if rows[2 * i + 1]:
                self._too_long(key, length)
                continue
            peer = peers.get(key)
            if peer is None:
                peer = self._new_peer(key)
                if peer is None:
                    continue
            elif peer._paused:
                self._drop("paused", 1)
                continue
            peer._last = now
            off = i * slot
            data = mv[off:off + length].tobytes()
            try:
                res = on_message(peer, None, data)
                if res is None:
                    continue
                size = len(res) if type(res) is bytes else -1
                if 0 <= size <= maxd and self._out_bytes + size <= limit:   # common: inline
                    out_append(res)
                    peers_append(peer)
                    self._out_bytes += size
                else:
                    self.queue(peer, res, self._source)
            except Exception as exc:
                self.fail(peer, exc)

    def _new_peer(self, key: bytes) -> UdpPeer | None:
        if self.connected or self._closed or self.loop._stopping:
            return None
        adm = self._admission
        if adm is not None and not adm.admit():
            self._drop("over_limit", 1)
            return None
        peer = UdpPeer(self, key, self.loop.now)
        self.peers[key] = peer
        self.loop.accepted += 1
        try:
            self.handler.on_connect(peer)
        except Exception as exc:
            self.fail(peer, exc)
        return peer if peer._state == OPEN else None

    def _too_long(self, key: bytes, length: int) -> None:
        self._drop("too_long", 1)
        now = monotonic()
        if now - self._warned >= 1.0:       # at most one warning a second (a flood stays quiet)
            self._warned = now
            who = decode_sockaddr(key) if key else self.local
            log.warning("dropped a datagram of %d bytes from %s: longer than read_buffer_size "
                        "(%d); %d dropped so far", length, who, self.slot, self.dropped["too_long"])

    def _recv_error(self, err: int) -> None:
        if self.connected:          # ICMP errors (port unreachable, ...) end a connected socket
            for peer in list(self.peers.values()):
                self.close_peer(peer, OSError(err, f"UDP receive: {errno.errorcode.get(err, err)}"),
                                "reset" if err == errno.ECONNREFUSED else "error")
        else:
            log.debug("recvmmsg on %s failed: errno %d", self.local, err)

    def _drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
    def set_paused(self, peer: UdpPeer, on: bool) -> None:
        if peer._state == OPEN:
            peer._paused = (peer._paused | 2) if on else (peer._paused & ~2)

    # ------------------------------------------------------------------------------------
    # peers
    # ------------------------------------------------------------------------------------
    def fail(self, peer: UdpPeer, exc: BaseException) -> None:
        log.error("handler error on %r, closing it", peer, exc_info=exc)
        self.close_peer(peer, exc, "error")

    def close_peer(self, peer: UdpPeer, error: BaseException | None, reason: str) -> None:
        """Forget the peer (its queued datagrams still leave) and run on_close once."""
        if peer._state == CLOSED:
            return
        peer._peer = peer.peer_addr         # decoded now: kept after close
        peer._state = CLOSED
        peer._error = error
        peer._reason = reason
        if self.peers.get(peer._key) is peer:
            del self.peers[peer._key]
        loop = self.loop
        loop.closer.count(reason)
        if self._admission is not None:
            self._admission.released()
        try:
            self.handler.on_close(peer, error)
        except Exception:
            log.exception("%s.on_close raised", type(self.handler).__name__)
        peer._fd = -1
        if self.connected and not self._closed:    # a dialed socket lives as long as its peer
            self.flush()
            self.close()

    def expire(self) -> None:
        """Periodic: close peers quiet for idle_timeout."""
        idle = self._idle
        if idle is None or self._closed:
            return
        now = self.loop.now
        for peer in [p for p in self.peers.values() if now - p._last >= idle]:
            self.close_peer(peer, PeerTimeout(f"idle for {idle} s", "idle"), "idle")

    # ------------------------------------------------------------------------------------
    # writing
    # ------------------------------------------------------------------------------------
    def queue(self, peer: UdpPeer, data: Any, source: str) -> None:
        """Queue one datagram to `peer` (loop thread).  Not bytes-like: TypeError; longer
        than UDP allows: ValueError (both name `source`)."""
        if type(data) is not bytes:
            if is_deferred(data):            # a Future: its result is the datagram, when done
                self.loop.deferrals.when_done(data, partial(self._deferred, peer, source))
                return
            data = datagram(data, source)
        n = len(data)
        if n > self._max:
            raise ValueError(f"{source}: a datagram of {n} bytes exceeds the UDP maximum of "
                             f"{self._max}")
        if self._closed or self._out_bytes + n > self._limit:
            self._drop("queue_full" if not self._closed else "stop", 1)
            return
        self._out.append(data)
        self._out_peers.append(peer)
        self._out_bytes += n
        peer._last = self.loop.now
        if not self._in_read and not self._writing:
            self._interest(self._reading, True)     # flushed on the writable event

    def _deferred(self, peer: UdpPeer, source: str, result: Any,
                  error: BaseException | None) -> None:
        """A deferred reply arrived (loop thread): datagrams need no order, it goes now."""
        if peer._state or self._closed:
            return
        try:
            if error is not None:
                raise error
            if result is not None:
                self.queue(peer, result, source)
        except Exception as exc:
            self.fail(peer, exc)

    def queued(self, peer: UdpPeer) -> int:
        """Bytes of `peer`'s datagrams waiting to be sent (pending_write; any thread)."""
        return sum([len(d) for d, p in zip(list(self._out), list(self._out_peers)) if p is peer])

    def post(self, peer: UdpPeer, data: Any) -> None:
        """send() from another thread: copied now, counted in pending_write, queued by the loop."""
        data = datagram(data, "send()")
        if len(data) > self._max:
            raise ValueError(f"send(): a datagram of {len(data)} bytes exceeds the UDP maximum "
                             f"of {self._max}")
        loop = self.loop
        with loop._inbox_lock:
            peer._posted += len(data)
        loop.call_soon(self._posted, peer, data)

    def _posted(self, peer: UdpPeer, data: bytes) -> None:
        with self.loop._inbox_lock:
            peer._posted -= len(data)
        if peer._state == OPEN and not peer._shut:
            try:
                self.queue(peer, data, "send()")
            except Exception as exc:
                self.fail(peer, exc)

    def flush(self) -> None:
        """Send the queued datagrams: one sendmmsg per UDP_BATCH (native)."""
        out = self._out
        if not out or self._closed:
            return
        peers = self._out_peers
        blob = b"".join(out)
        lens = [len(d) for d in out]
        total = len(out)
        cblob = ffi.from_buffer(blob)
        addrs: Any = ffi.NULL
        if not self.connected:
            addrs = ffi.from_buffer(b"".join([p._key for p in peers]))
        err = self._err
        pos = off = sent_bytes = 0
        failed: tuple[UdpPeer, int] | None = None
        while pos < total:
            k = lib.pg_udp_send(self.fd, cblob + off, lens[pos:],
                                addrs + pos * ADDR if addrs != ffi.NULL else ffi.NULL,
                                total - pos, err)
            done = sum(lens[pos:pos + k])
            off += done
            sent_bytes += done
            pos += k
            if pos < total:
                e = err[0]
                if e in _AGAIN:
                    break
                self._drop("send_error", 1)         # that one datagram is lost
                off += lens[pos]
                pos += 1
                if self.connected:                  # the peer is unreachable: it ends below
                    failed = (peers[pos - 1], e)
                    break
                log.debug("sendmmsg to %r failed: errno %d", peers[pos - 1], e)
        self.loop.out.sent_bytes += sent_bytes
        del out[:pos]
        del peers[:pos]
        self._out_bytes -= off
        # backpressure: the socket's buffer is full; stop reading while much waits
        reading = self._reading
        if self._out_bytes > self._high:
            reading = False
        elif self._out_bytes <= self._low:
            reading = True
        self._interest(reading, bool(out))
        if failed is not None:      # after the queue is consistent: closing flushes again
            peer, e = failed
            self.close_peer(peer, OSError(e, f"UDP send: {errno.errorcode.get(e, e)}"),
                            "reset" if e == errno.ECONNREFUSED else "error")

    def _interest(self, readable: bool, writable: bool) -> None:
        if self._closed or (readable == self._reading and writable == self._writing):
            return
        self._reading, self._writing = readable, writable
        self.loop.poller.modify(self.fd, KIND_UDP, readable, writable)


def _connected_socket(address: Any, network: str) -> socket.socket:
    """A non-blocking UDP socket connected to the first resolved address that takes it."""
    if isinstance(address, str):
        host, sep, port_text = address.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"address {address!r} is not host:port")
        host, port = host.strip("[]"), int(port_text)
    elif isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
    else:
        raise TypeError(f"address must be 'host:port' or a (host, port) tuple, not "
                        f"{type(address).__name__}")
    family = {"udp4": socket.AF_INET, "udp6": socket.AF_INET6}.get(network, socket.AF_UNSPEC)
    error: OSError = OSError(f"cannot resolve {address!r}")
    for fam, _type, proto, _name, sockaddr in socket.getaddrinfo(host or "127.0.0.1", port, family,
                                                                 socket.SOCK_DGRAM):
        sock = socket.socket(fam, socket.SOCK_DGRAM, proto)
        try:
            sock.setblocking(False)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def serve(loop: EventLoop, sock: socket.socket) -> UdpEndpoint:
    """Serve a bound UDP socket on `loop` with its server's handler and options (loop
    thread, at start)."""
    server = loop.server
    opts = server.options
    ep = UdpEndpoint(loop, sock, server.callbacks,
                     idle=DEFAULT_IDLE if opts.idle_timeout is None else opts.idle_timeout,
                     connected=False, read_max=opts.read_buffer_size, high=opts.write_high_water,
                     low=opts.write_low_water, limit=opts.write_limit, admission=server.admission)
    ep.open()
    return ep


def dial_udp(loop: EventLoop, address: Any, handler: Handler, *, network: str = "udp",
             idle_timeout: float | None = None, read_buffer_size: int = 65536) -> Connection:
    """A connected UDP socket to `address` ("host:port", "[v6]:port" or a (host, port) tuple)
    served by `loop` with `handler`: returns its Connection at once (thread-safe; the name is
    resolved here, so pass a numeric address not to block).  on_connect runs on the loop;
    send() before that queues in order.  An ICMP error (nothing listens there) closes it with
    the OSError (ConnectionRefusedError).  idle_timeout None: it never expires."""
    if isinstance(handler, type) or not callable(getattr(handler, "on_message", None)):
        raise TypeError("handler must be a reactor.Handler instance")
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {network!r}")
    sock = _connected_socket(address, network)
    opts = loop.server.options
    ep = UdpEndpoint(loop, sock, handler, idle=idle_timeout, connected=True,
                     read_max=read_buffer_size, high=opts.write_high_water,
                     low=opts.write_low_water, limit=opts.write_limit)
    conn = UdpPeer(ep, b"", monotonic())
    conn._peer = sock.getpeername()
    ep.peers[b""] = conn

    def start() -> None:
        if loop._stopping or conn._state != OPEN:
            ep.close()
            return
        ep.open()
        try:
            handler.on_connect(conn)
        except Exception as exc:
            ep.fail(conn, exc)

    loop.call_here(start)
    return conn


__all__ = ["DEFAULT_IDLE", "NETWORKS", "UDP_BATCH", "UdpEndpoint", "UdpPeer", "bind_sockets",
           "dial_udp", "is_udp", "serve"]
