"""Server: the public face of a pygev service - options, event loops (threads), start and stop,
timers, stats.  Accepting is admission.py's; pre-forked workers are workers.py's, which builds
each worker's own Server from this one's options (`worker_copy`)."""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
import zlib
from typing import Any, Callable

from ._native import F_NODELAY
from .admission import Admission, format_address
from .coroutines import AsyncRunner, CoroutineHandler, coroutine_callbacks
from .backends import Backend
from .backends import resolve as resolve_backend
from .handler import Handler
from .loop import EventLoop
from .options import OPTION_NAMES, LoadBalance, Network, ServerOptions, check_handler
from .protocol import DefaultProtocol, Protocol
from .stats import collect
from .timers import Timer
from .udp import is_udp, serve as serve_udp

log = logging.getLogger("reactor.server")

_RUNS_ONCE = "this Server was already started (a Server serves once: build a new one to serve again)"


class Server:
    """A TCP (or unix-socket) server driving `handler` from `num_loops` event loops.

    `start()` serves in the calling thread until `stop()`; `with Server(...) as srv:` serves in
    a background thread for the duration of the block.  Every argument is checked here
    (TypeError / ValueError naming it).  Options:

    address=":1833"            "host:port"; ":port" binds all IPv4 interfaces; "[::1]:1833" IPv6;
                               a filesystem path for network="unix"
    network="tcp"              "tcp", "tcp4", "tcp6" (IPV6_V6ONLY) or "unix"; "udp", "udp4",
                               "udp6": each datagram a message, one connection per peer (udp.py)
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
                               read-only memoryviews (zero copy); 0: always views, None: always bytes
    frame_timeout=30.0         a message begun (a partial frame) must be complete within this
    handshake_timeout=10.0     TLS handshakes must finish within this (None: no limit)
    ssl=None                   a server-side ssl.SSLContext to serve TLS
    slow_callback=0.1          warn when a turn or timer blocks the loop longer (None: never)
    backend=None               "epoll" (kqueue on BSD/macOS) or "io_uring" (Linux; OSError where
                               it cannot be set up); None: $PYGEV_BACKEND or epoll, falling back to
                               epoll (logged once) where io_uring is unavailable (see backends.py)
    max_pending_replies=64     deferred replies (Futures, coroutines) a connection may have
                               pending; at the cap its further messages wait and it is not read

    on_message may return a concurrent.futures / asyncio Future: its result is the reply, in
    order with the connection's other replies.  `async def` callbacks run on an asyncio loop:
    the one running `async with Server(...)`, else one pygev runs in a thread of its own.
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
                 ssl: Any = None, slow_callback: float | None = 0.1,
                 max_pending_replies: int = 64, backend: Backend | None = None) -> None:
        check_handler(handler, protocol)
        if is_udp(network) and protocol is not None and type(protocol) is not DefaultProtocol:
            raise ValueError(f"protocol: protocols do not apply to UDP (network={network!r}): "
                             "each datagram is one message; leave protocol=None")
        high_ok = isinstance(write_high_water, int) and not isinstance(write_high_water, bool)
        if write_low_water is None:
            write_low_water = write_high_water // 4 if high_ok else 0
        if write_limit is None:
            write_limit = max(16 << 20, write_high_water) if high_ok else 16 << 20
        options = ServerOptions(
            address=address, network=network, num_loops=1 if num_loops is None else num_loops,
            workers=workers, reuse_port=reuse_port, idle_timeout=idle_timeout,
            load_balance=load_balance, metrics_address=metrics_address, metrics_path=metrics_path,
            tcp_nodelay=tcp_nodelay, tcp_keepalive=tcp_keepalive,
            backlog=1024 if backlog is None else backlog, max_connections=max_connections,
            read_buffer_size=read_buffer_size, write_high_water=write_high_water,
            write_low_water=write_low_water, write_limit=write_limit,
            view_threshold=view_threshold, frame_timeout=frame_timeout,
            handshake_timeout=handshake_timeout, ssl=ssl, slow_callback=slow_callback,
            max_pending_replies=max_pending_replies, backend=backend)
        self._setup(handler, protocol if protocol is not None else DefaultProtocol(), options)

    @classmethod
    def from_options(cls, handler: Handler, protocol: Protocol | None, options: ServerOptions) -> Server:
        """A Server with these (already validated) options."""
        kwargs = {name: getattr(options, name) for name in OPTION_NAMES}
        return cls(handler, protocol=protocol, **kwargs)

    def _setup(self, handler: Handler, protocol: Protocol, options: ServerOptions) -> None:
        self.options = options
        self.handler = handler
        asynchronous = coroutine_callbacks(handler)          # decided once, here
        self._runner = AsyncRunner() if asynchronous else None
        self.callbacks: Any = (CoroutineHandler(handler, self._runner, asynchronous)
                               if self._runner is not None else handler)
        """What the loops call: the handler, or its adapter when some callbacks are async."""
        self._executor: ThreadPoolExecutor | None = None
        self._closed_waiters: list[Callable[[], None]] = []
        self.protocol: Protocol = protocol
        self.network = options.network
        self.num_loops = options.num_loops
        self.workers = options.workers
        self.idle_timeout = options.idle_timeout
        self.metrics_path = options.metrics_path
        self.backend = resolve_backend(options.backend)    # "epoll" or "io_uring", once
        self._exporter: Any = None
        self._loops = [EventLoop(self, i) for i in range(self.num_loops)]
        self.admission = Admission(options, self._loops)
        self._lock = threading.Lock()
        self._started = False
        self._serving = False
        self._stop_requested = False
        self._ready = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._bg: threading.Thread | None = None
        self._bg_error: BaseException | None = None
        self._stop_hooks: list[Callable[[float | None], None]] = []
        self.worker_pool: Any = None
        self.listens = True               # a Client has loops and no listener

    def __repr__(self) -> str:
        state = "serving" if self._serving else "stopped" if self._stop_requested else "not started"
        where = self.address if self.address is not None else self.options.address
        return (f"<Server {type(self.handler).__name__} {self.network} {where} {state} "
                f"loops={self.num_loops} workers={self.workers} connections={self.connection_count}>")

    # ------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------
    @property
    def address(self) -> Any:
        """The bound address (getsockname()): (host, port), a 4-tuple for IPv6, or a unix path."""
        return self.admission.address

    @property
    def metrics_address(self) -> Any:
        """Where Prometheus metrics are served, once started (None without metrics_address)."""
        return self._exporter.address if self._exporter is not None else None

    @property
    def connection_count(self) -> int:
        """Connections currently open (accepted and not yet closed), across all loops."""
        return self.admission.count

    @property
    def loops(self) -> list[EventLoop]:
        return list(self._loops)

    def run_after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run fn(*args) once, `delay` seconds from now, on the first event loop."""
        return self._loops[0].run_after(delay, fn, *args)

    def run_every(self, interval: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run fn(*args) every `interval` seconds on the first event loop until cancelled."""
        return self._loops[0].run_every(interval, fn, *args)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """A thread pool for blocking work (made on first use, shut down at stop):
        `return server.executor.submit(query, data)` from on_message is a deferred reply."""
        with self._lock:
            if self._executor is None:
                if self._stop_requested and not self._serving:
                    raise RuntimeError("this Server has stopped: its executor is shut down")
                self._executor = ThreadPoolExecutor(thread_name_prefix="reactor-executor")
            return self._executor

    def connect(self, address: str, handler: Handler, **options: Any) -> Any:
        """Dial `address` on a loop the load balancer picks; see EventLoop.connect for the
        options (network, protocol, timeout, ssl, server_hostname).  Thread-safe."""
        if self.workers > 1:
            raise RuntimeError("Server.connect() with workers > 1: the parent runs no loop; dial "
                               "from a worker with conn.loop.connect() (or in Handler.on_start)")
        key = zlib.crc32(address.encode()) if isinstance(address, str) else 0
        return self.admission.pick(key).connect(address, handler, **options)

    def stats(self) -> dict[str, Any]:
        """This process's counters (what reactor.metrics exports), read without locks."""
        return collect(self._loops, self.admission.count)

    def start(self) -> None:
        """Serve until stop() is called (from another thread, a handler, a timer or a signal).
        A server runs once: start() on one that is serving or was stopped raises RuntimeError."""
        with self._lock:
            if self._started:
                raise RuntimeError(_RUNS_ONCE)
            self._started = True
        if self.workers > 1:
            self._serve_workers()
        else:
            self._serve()

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: stop accepting, flush queued output for at most `timeout` seconds
        (None: at most 30 s, dropping a peer that makes no progress for 5 s), close every
        connection, join the loop threads.  Thread-safe, idempotent; from a handler, a timer or a
        coroutine it returns at once (the loops finish after it: `await srv.wait_closed()`)."""
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
            self._set_done()
            return
        if any(loop.in_loop_thread() for loop in self._loops) or (
                self._runner is not None and self._runner.on_its_thread()):
            return      # from a callback or a coroutine: the loops finish after it returns
        self._wait_done()
        bg = self._bg
        if bg is not None and bg is not threading.current_thread():
            bg.join()
        if self._bg_error is not None:
            error, self._bg_error = self._bg_error, None
            raise error

    def _wait_done(self) -> None:
        """Wait for the loops to finish; a second Ctrl-C here ends the stop at once (the loops
        drop what is left) instead of a traceback from inside stop()."""
        try:
            self._done.wait()
        except KeyboardInterrupt:
            self.hurry()
            self._done.wait()

    def hurry(self) -> None:
        """End a stop under way at once: what is still queued is dropped (a second Ctrl-C)."""
        for loop in self._loops:
            loop.call_soon(loop.closer.begin_stop, 0)

    def __enter__(self) -> Server:
        """Serve in a background thread; the bound address is ready when this returns."""
        with self._lock:
            if self._started:
                raise RuntimeError(_RUNS_ONCE)
            if self._stop_requested:      # it would not serve: say so instead of doing nothing
                raise RuntimeError("this Server was stopped before it started; build a new one")
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

    async def __aenter__(self) -> Server:
        """Serve in background threads from inside an asyncio program; `async def` callbacks
        run on this (the running) asyncio loop."""
        if self._runner is not None:
            self._runner.borrow(asyncio.get_running_loop())
        await asyncio.to_thread(self.__enter__)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.stop)

    async def wait_closed(self) -> None:
        """Wait (without blocking the asyncio loop) until the server has stopped."""
        loop = asyncio.get_running_loop()
        closed = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, closed)

        with self._lock:
            if self._done.is_set():
                return
            self._closed_waiters.append(wake)
        await closed

    def _set_done(self) -> None:
        """The server has stopped (or will never serve): wake stop() and wait_closed()."""
        self._done.set()
        with self._lock:
            waiters, self._closed_waiters = self._closed_waiters, []
        for wake in waiters:
            try:
                wake()
            except RuntimeError:        # that asyncio loop is closed
                pass

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
            self._set_done()

    def bind(self) -> Any:
        """Bind the listener now (idempotent); returns the bound address."""
        return self.admission.bind()

    def close_listeners(self) -> None:
        """Stop listening (the first loop does this when it begins to stop)."""
        self.admission.close_listeners()

    def _begin_serving(self) -> bool:
        """Mark the server serving; False when stop() came first."""
        with self._lock:
            if self._stop_requested:
                self._ready.set()
                stopped = True
            else:
                stopped = False
                self._serving = True
        if stopped:
            self._set_done()
            return False
        return True

    def _publish_ready(self) -> None:
        """Start the metrics exporter (if asked) and let start()/`with` callers go on."""
        if self.options.metrics_address is not None and self._exporter is None:
            from .metrics import MetricsExporter
            exporter = MetricsExporter(self)
            exporter.start(self.options.metrics_address, self.metrics_path)
            self._exporter = exporter       # published only once it has an address
        self._ready.set()

    def _serve(self) -> None:
        """Bind, open the loops and run them (loop 0 in this thread) until stopped."""
        if not self._begin_serving():
            return
        opened: list[EventLoop] = []
        admission = self.admission
        started = False
        try:
            if self.listens:
                admission.bind()
            admission.open()
            for loop in self._loops:
                loop.open(admission.addresses)
                opened.append(loop)
                loop.start_housekeeping()
            for sock in admission.listeners:
                self._loops[0].add_listener(sock.fileno(), admission.nodelay, F_NODELAY)
            for loop, sock in zip(self._loops, admission.datagram_sockets):
                serve_udp(loop, sock)
            if self._runner is not None:
                self._runner.start()
            on_start = getattr(self.handler, "on_start", None)
            if on_start is not None:
                on_start(self)          # this thread runs the first loop; nothing served yet
            started = True
            self._publish_ready()
        except BaseException:
            for loop in opened:
                loop.teardown()
            self._cleanup()
            if started:
                self._on_stop()
            raise
        for loop in self._loops[1:]:
            t = threading.Thread(target=loop.run, name=f"reactor-loop-{loop.index}", daemon=True)
            self._threads.append(t)
            t.start()
        log.info("serving on %s with %d loop(s)", self.address if self.listens else "no listener",
                 self.num_loops)
        try:
            self._loops[0].run()
        finally:
            for t in self._threads:
                t.join()
            self._threads.clear()
            self._on_stop()
            self._cleanup()

    def _on_stop(self) -> None:
        """Handler.on_stop once the loops finished (every connection is closed)."""
        on_stop = getattr(self.handler, "on_stop", None)
        if on_stop is None:
            return
        try:
            on_stop(self)
        except Exception:
            log.exception("%s.on_stop raised", type(self.handler).__name__)

    def _serve_workers(self) -> None:
        """workers > 1: this process supervises forked workers (each runs `worker_copy()`)."""
        from .workers import WorkerPool
        pool = self.worker_pool = WorkerPool(self, self.workers, self._note_stop)
        self._stop_hooks.append(pool.stop)
        if not self._begin_serving():
            pool.close()
            return
        try:
            pool.run(on_ready=self._publish_ready)
        finally:
            self._cleanup()

    def _note_stop(self) -> None:
        """A signal asked the supervisor to stop (it cannot wait for itself in stop())."""
        with self._lock:
            self._stop_requested = True

    def worker_copy(self) -> Server:
        """The Server a forked worker runs: these options with one process, no metrics of its
        own (the parent serves them for all), the real port (not 0 again); a unix listener is
        inherited, not bound again."""
        unix = self.network == "unix"
        options = self.options.but(workers=1, metrics_address=None, reuse_port=not unix,
                                   address=self.options.address if unix else format_address(self.address))
        child = Server.from_options(self.handler, self.protocol, options)
        if unix:
            child.admission.adopt_listeners(self.admission.listeners, self.address)
        return child

    def _cleanup(self) -> None:
        self.admission.close()
        if self._exporter is not None:
            self._exporter.close()
        if self._runner is not None:
            self._runner.close()          # what the closed connections left, bounded
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._serving = False
        self._set_done()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


__all__ = ["Server"]
