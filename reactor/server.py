"""Server: listeners, event loops (threads), load balancing, start/stop, timers and stats."""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
from typing import Any, Callable

from ._native import F_NODELAY, ffi, lib
from .handler import Handler
from .loop import ADDR_ENTRY, TURN_BUCKETS, EventLoop
from .options import LoadBalance, Network, ServerOptions
from .protocol import DefaultProtocol, Protocol
from .timers import Timer

log = logging.getLogger("reactor.server")


_ACCEPT_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_PAUSE = 0.1          # seconds without accepting after the process ran out of descriptors


def parse_address(address: str, network: str) -> tuple[socket.AddressFamily, Any]:
    """(family, sockaddr) for `address`: "host:port", ":port" (all interfaces), "[v6]:port",
    or a filesystem path for network="unix"."""
    if network == "unix":
        return socket.AF_UNIX, address
    if network not in ("tcp", "tcp4", "tcp6"):
        raise ValueError(f"network must be tcp, tcp4, tcp6 or unix, not {network!r}")
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if network == "tcp6" or (network == "tcp" and ":" in host):
        family = socket.AF_INET6
    else:
        family = socket.AF_INET
    if not host:
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    return family, info[0][4]


class Server:
    """A TCP (or unix-socket) server driving `handler` from `num_loops` event loops.

    `start()` serves in the calling thread until `stop()`; `with Server(...) as srv:` serves in
    a background thread for the duration of the block.  Every argument is checked here
    (TypeError / ValueError naming it).  Options:

    address=":1833"            "host:port"; ":port" binds all IPv4 interfaces; "[::1]:1833" IPv6;
                               a filesystem path for network="unix"
    network="tcp"              "tcp", "tcp4", "tcp6" (IPV6_V6ONLY) or "unix"
    num_loops=None             event loops (threads) in this process; None means 1
    workers=1                  processes sharing the port (SO_REUSEPORT), supervised
    reuse_port=False           SO_REUSEPORT on the listener (forced on with workers > 1)
    idle_timeout=None          close a connection this many seconds after its last read or write
    protocol=None              a Protocol instance; default DefaultProtocol (each read a message)
    load_balance="round_robin" or "least_connections", "source_addr_hash"
    metrics_address=None       "host:port" to serve Prometheus metrics at metrics_path
    tcp_nodelay=True, tcp_keepalive=None (seconds), backlog=None (1024)
    max_connections=None       connections over the cap are closed at once (no on_connect)
    read_buffer_size=65536     largest single read per connection per turn
    write_high_water=1 MiB, write_low_water=high/4
                               backpressure: past high water reading stops until below low water
    write_limit=16 MiB (at least high water): unsent output past this - a peer that does not read
                               while others send to it - drops that connection (OutputLimitExceeded)
    view_threshold=4096        messages shorter than this reach on_message as bytes, longer ones as
                               memoryviews (zero copy); 0: always views, None: always bytes
    frame_timeout=30.0         a message begun (a partial frame) must be complete within this
    handshake_timeout=10.0     TLS handshakes must finish within this (None: no limit)
    ssl=None                   a server-side ssl.SSLContext to serve TLS
    slow_callback=0.1          warn when a turn or timer blocks the loop longer (None: never)
    """

    def __init__(self, handler: Handler, *, address: str = ":1833", network: Network = "tcp",
                 num_loops: int | None = None, workers: int = 1, reuse_port: bool = False,
                 idle_timeout: float | None = None, protocol: Protocol | None = None,
                 load_balance: LoadBalance = "round_robin", metrics_address: str | None = None,
                 metrics_path: str = "/metrics", tcp_nodelay: bool = True,
                 tcp_keepalive: float | None = None, backlog: int | None = None,
                 max_connections: int | None = None, read_buffer_size: int = 65536,
                 write_high_water: int = 1 << 20, write_low_water: int | None = None,
                 write_limit: int | None = None, view_threshold: int | None = 4096,
                 frame_timeout: float = 30.0, handshake_timeout: float | None = 10.0,
                 ssl: Any = None, slow_callback: float | None = 0.1) -> None:
        if isinstance(handler, type):
            raise TypeError(f"handler must be an instance, not the class {handler.__name__} "
                            f"(write {handler.__name__}())")
        if not callable(getattr(handler, "on_message", None)):
            raise TypeError(f"handler must be a reactor.Handler (or have on_message), "
                            f"not {type(handler).__name__}")
        if isinstance(protocol, type):
            raise TypeError(f"protocol must be an instance, not the class {protocol.__name__} "
                            f"(write {protocol.__name__}())")
        if protocol is not None and not callable(getattr(protocol, "unpacket", None)):
            raise TypeError(f"protocol must be a reactor.Protocol, not {type(protocol).__name__}")
        if isinstance(write_high_water, int) and not isinstance(write_high_water, bool):
            if write_low_water is None:
                write_low_water = write_high_water // 4
            if write_limit is None:
                write_limit = max(16 << 20, write_high_water)
        self.options = ServerOptions(
            address=address, network=network, num_loops=1 if num_loops is None else num_loops,
            workers=workers, reuse_port=reuse_port, idle_timeout=idle_timeout,
            load_balance=load_balance, metrics_address=metrics_address, metrics_path=metrics_path,
            tcp_nodelay=tcp_nodelay, tcp_keepalive=tcp_keepalive,
            backlog=1024 if backlog is None else backlog, max_connections=max_connections,
            read_buffer_size=read_buffer_size, write_high_water=write_high_water,
            write_low_water=write_low_water if write_low_water is not None else 0,
            write_limit=write_limit if write_limit is not None else 16 << 20,
            view_threshold=view_threshold, frame_timeout=frame_timeout,
            handshake_timeout=handshake_timeout, ssl=ssl, slow_callback=slow_callback)
        opts = self.options
        self.handler = handler
        self.protocol: Protocol = protocol if protocol is not None else DefaultProtocol()
        self.network = network
        self.num_loops = opts.num_loops
        self.workers = workers
        self.idle_timeout = idle_timeout
        self.load_balance = load_balance
        self.tcp_nodelay = tcp_nodelay
        self.tcp_keepalive = tcp_keepalive
        self.backlog = opts.backlog
        self.max_connections = max_connections
        self.read_buffer_size = read_buffer_size
        self.write_high_water = write_high_water
        self.write_low_water = opts.write_low_water
        self.slow_callback = slow_callback
        self.ssl = ssl
        self.metrics_path = metrics_path
        self._metrics_address = metrics_address
        self._exporter: Any = None
        self._family, self._sockaddr = parse_address(address, network)
        self._reuse_port = reuse_port or workers > 1
        self._socks: list[socket.socket] = []
        self._address: Any = None
        self._unlink_path: str | None = None
        self._loops = [EventLoop(self, i) for i in range(self.num_loops)]
        self._balance = _BALANCERS[load_balance]
        self._rr = 0
        self._count = 0
        self._count_lock = threading.Lock()
        self._lock = threading.Lock()
        self._serving = False
        self._started = False
        self._stop_requested = False
        self._ready = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._bg: threading.Thread | None = None
        self._bg_error: BaseException | None = None
        self._spare_fd = -1
        self._last_accept_warning = 0.0
        self._stop_hooks: list[Callable[[float | None], None]] = []
        self._addrs: Any = None

    def __repr__(self) -> str:
        state = ("serving" if self._serving else "stopped" if self._stop_requested else "not started")
        where = self._address if self._address is not None else self.options.address
        return (f"<Server {type(self.handler).__name__} {self.network} {where} {state} "
                f"loops={self.num_loops} workers={self.workers} connections={self._count}>")

    # ------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------
    @property
    def address(self) -> Any:
        """The bound address (getsockname()): (host, port), a 4-tuple for IPv6, or a unix path."""
        return self._address

    @property
    def metrics_address(self) -> Any:
        """Where Prometheus metrics are served, once started (None without metrics_address)."""
        return self._exporter.address if self._exporter is not None else None

    @property
    def connection_count(self) -> int:
        """Connections currently open (accepted and not yet closed), across all loops."""
        return self._count

    @property
    def loops(self) -> list[EventLoop]:
        return list(self._loops)

    def run_after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run fn(*args) once, `delay` seconds from now, on the first event loop."""
        return self._loops[0].run_after(delay, fn, *args)

    def run_every(self, interval: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run fn(*args) every `interval` seconds on the first event loop until cancelled."""
        return self._loops[0].run_every(interval, fn, *args)

    def start(self) -> None:
        """Serve until stop() is called (from another thread, a handler, a timer or a signal).
        A server runs once: start() on one that is serving or was stopped raises RuntimeError."""
        with self._lock:
            if self._started:
                raise RuntimeError("this Server was already started (it serves once; build a new "
                                   "Server to serve again)")
            self._started = True
        if self.workers > 1:
            from .workers import run_workers
            run_workers(self)
            return
        self._serve()

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: stop accepting, flush queued output for at most `timeout` seconds
        (None: until flushed, dropping a peer that makes no progress for 5 s), close every
        connection, join the loop threads.  Thread-safe, idempotent, callable from handlers."""
        with self._lock:
            first = not self._stop_requested
            self._stop_requested = True
            serving = self._serving
        if first:
            for hook in self._stop_hooks:
                hook(timeout)
            for loop in self._loops:
                loop.call_soon(loop.begin_stop, timeout)
        if not serving:
            self._done.set()
            return
        if any(loop.in_loop_thread() for loop in self._loops):
            return      # called from a callback: the loops finish after it returns
        self._done.wait()
        bg = self._bg
        if bg is not None and bg is not threading.current_thread():
            bg.join()
        if self._bg_error is not None:
            error, self._bg_error = self._bg_error, None
            raise error

    def __enter__(self) -> Server:
        """Serve in a background thread; the bound address is ready when this returns."""
        with self._lock:
            if self._started:
                raise RuntimeError("this Server was already started (it serves once; build a new "
                                   "Server to serve again)")
        self._bg = threading.Thread(target=self._serve_background, name="reactor-server", daemon=True)
        self._bg.start()
        self._ready.wait()
        if self._bg_error is not None:
            self._bg.join()
            error, self._bg_error = self._bg_error, None
            raise error
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------
    # serving
    # ------------------------------------------------------------------------------------
    def _serve_background(self) -> None:
        try:
            self.start()
        except BaseException as exc:   # surfaced by __enter__ or stop(), reported once there
            self._bg_error = exc
            log.debug("server failed", exc_info=exc)
        finally:
            self._ready.set()
            self._done.set()

    def _bind(self) -> Any:
        """Create and bind the listening socket (idempotent); returns the bound address."""
        if self._socks:
            return self._address
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            if self._family == socket.AF_UNIX:
                self._remove_stale_unix_socket(self._sockaddr)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self._family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self._reuse_port and self._family != socket.AF_UNIX:   # not a thing for unix sockets
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(self._sockaddr)
            sock.listen(self.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        if self._family == socket.AF_UNIX:
            self._unlink_path = self._sockaddr
        self._socks.append(sock)
        self._address = sock.getsockname()
        return self._address

    @staticmethod
    def _remove_stale_unix_socket(path: str) -> None:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass

    def close_listeners(self) -> None:
        """Stop listening (loop 0 calls this when it begins to stop)."""
        self._close_listeners()

    def _close_listeners(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks.clear()
        if self._unlink_path is not None:
            try:
                os.unlink(self._unlink_path)
            except OSError:
                pass
            self._unlink_path = None

    def _serve(self) -> None:
        """Bind, open the loops and run them (loop 0 in this thread) until stopped."""
        with self._lock:
            if self._stop_requested:
                self._ready.set()
                self._done.set()
                return
            self._serving = True
        opened: list[EventLoop] = []
        try:
            self._bind()
            self._addrs = ffi.new("char[]", ADDR_ENTRY * EventLoop.fd_table_size())
            for loop in self._loops:
                loop.open(self._addrs)
                opened.append(loop)
                loop.start_housekeeping()
            nodelay = self.tcp_nodelay and self._family != socket.AF_UNIX
            for sock in self._socks:
                self._loops[0].add_listener(sock.fileno(), nodelay, F_NODELAY)
            self._spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            if self._metrics_address is not None:
                from .metrics import MetricsExporter
                exporter = MetricsExporter(self)
                exporter.start(self._metrics_address, self.metrics_path)
                self._exporter = exporter       # published only once it has an address
        except BaseException:
            for loop in opened:
                loop.teardown()
            self._cleanup()
            raise
        for loop in self._loops[1:]:
            t = threading.Thread(target=loop.run, name=f"reactor-loop-{loop.index}", daemon=True)
            self._threads.append(t)
            t.start()
        log.info("serving on %s with %d loop(s)", self._address, self.num_loops)
        self._ready.set()
        try:
            self._loops[0].run()
        finally:
            for t in self._threads:
                t.join()
            self._threads.clear()
            self._cleanup()

    def _cleanup(self) -> None:
        self._close_listeners()
        if self._spare_fd >= 0:
            os.close(self._spare_fd)
            self._spare_fd = -1
        if self._exporter is not None:
            self._exporter.close()
        with self._lock:
            self._serving = False
        self._done.set()

    # ------------------------------------------------------------------------------------
    # called from the loops
    # ------------------------------------------------------------------------------------
    def on_accept(self, loop: EventLoop, fd: int, addr_hash: int) -> None:
        """A new connection arrived on `loop` (the first one): cap, balance, hand over."""
        with self._count_lock:
            if self.max_connections is not None and self._count >= self.max_connections:
                full = True
            else:
                full = False
                self._count += 1
        if full:
            lib.pg_close(fd)
            loop.closed_by_reason["over_limit"] = loop.closed_by_reason.get("over_limit", 0) + 1
            log.debug("connection refused: max_connections=%d reached", self.max_connections)
            return
        loop.accepted += 1
        target = self._balance(self, addr_hash)
        if target is loop:
            loop.adopt_now(fd)
        else:
            target.adopt(fd)

    def released(self) -> None:
        """A connection counted by on_accept is gone."""
        with self._count_lock:
            self._count -= 1

    def on_accept_error(self, loop: EventLoop, listen_fd: int, err: int) -> None:
        """accept() failed.  Out of descriptors: shed one pending client with the spare fd and
        stop accepting briefly, so the loop neither spins nor stops serving others."""
        now = time.monotonic()
        if now - self._last_accept_warning >= 1.0:
            self._last_accept_warning = now
            log.warning("accept failed: %s", os.strerror(err))
        if err in _ACCEPT_EXHAUSTED and self._spare_fd >= 0:
            os.close(self._spare_fd)
            self._spare_fd = -1
            for sock in self._socks:
                if sock.fileno() == listen_fd:
                    try:
                        sock.accept()[0].close()
                    except OSError:
                        pass
            try:
                self._spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
        loop.pause_listener(listen_fd, _ACCEPT_PAUSE)

    def configure_socket(self, fd: int) -> None:
        """Per-connection socket options (keepalive), set when a loop adopts the fd."""
        keepalive = self.tcp_keepalive
        if keepalive is None or self._family == socket.AF_UNIX:
            return
        setopt = lib.pg_setsockopt_int
        setopt(fd, socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(keepalive))
        if hasattr(socket, "TCP_KEEPIDLE"):
            setopt(fd, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        if hasattr(socket, "TCP_KEEPINTVL"):
            setopt(fd, socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
        if hasattr(socket, "TCP_KEEPCNT"):
            setopt(fd, socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)

    def _stats(self) -> dict[str, Any]:
        """Counters for metrics, summed over this process's loops (read without locks)."""
        closed: dict[str, int] = {}
        turn_counts = [0] * (len(TURN_BUCKETS) + 1)
        stats: dict[str, Any] = {"connections": self._count, "accepted": 0, "received_bytes": 0,
                                 "sent_bytes": 0, "backpressure_pauses": 0, "turn_sum": 0.0}
        for loop in self._loops:
            stats["accepted"] += loop.accepted
            stats["received_bytes"] += loop.received_bytes
            stats["sent_bytes"] += loop.sent_bytes
            stats["backpressure_pauses"] += loop.backpressure_pauses
            stats["turn_sum"] += loop.turn_sum
            for reason, n in list(loop.closed_by_reason.items()):
                closed[reason] = closed.get(reason, 0) + n
            for i, n in enumerate(loop.turn_counts):
                turn_counts[i] += n
        stats["closed"] = closed
        buckets = []
        total = 0
        for bound, n in zip((*TURN_BUCKETS, float("inf")), turn_counts):
            total += n
            buckets.append((bound, total))
        stats["turn_buckets"] = buckets
        stats["turn_count"] = total
        return stats


# ----------------------------------------------------------------------------------------
# load balancing: which loop gets a new connection
# ----------------------------------------------------------------------------------------
def _round_robin(server: Server, addr_hash: int) -> EventLoop:
    loops = server._loops
    server._rr = (server._rr + 1) % len(loops)
    return loops[server._rr]


def _least_connections(server: Server, addr_hash: int) -> EventLoop:
    return min(server._loops, key=lambda loop: loop.connection_count + loop.backlog)


def _source_addr_hash(server: Server, addr_hash: int) -> EventLoop:
    return server._loops[addr_hash % len(server._loops)]


_BALANCERS: dict[str, Callable[[Server, int], EventLoop]] = {
    "round_robin": _round_robin,
    "least_connections": _least_connections,
    "source_addr_hash": _source_addr_hash,
}
