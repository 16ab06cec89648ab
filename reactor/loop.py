"""EventLoop: one thread, one poller, one turn at a time.

A turn is: one native call that waits and reads every ready socket into the loop's arena
(rows of ints come back, see _reactor.h) -> the reader (reading.py) hands each row to its
connection's protocol and handler -> a bounded batch of cross-thread work from the inbox ->
due timers -> the output flush (output.py: one sendmsg per connection) -> the arena's views
checked (reading.Arena).  Nothing is written to a socket except by the flush or by the output
ring draining on writability.

The loop owns the thread, the poller, the inbox and the timers; the pieces of a turn live in
their own modules: reading.py (rows -> handler calls), output.py (queued output, the flush),
closing.py (how connections end: the order of flush and close, lingering, deadlines, stop),
admission.py (accepting: cap, balancing, addresses).  The fd number is never reused while
pygev holds it: it is closed only after the flush that could write to it.

Cross-thread work (send() from a thread, accepted fds for this loop, timers, close) goes
through the inbox under one lock, with one eventfd wake-up per burst (`_wake_pending` is
cleared when a poll returns, so a wake-up is never skipped while the loop sleeps); a turn runs at most
INBOX_BATCH of it, so a thread that sends in a tight loop cannot starve polling and flushing.
An fd handed over after the loop finished is closed by the hand-over itself (`adopt`).
"""
from __future__ import annotations

import bisect
import errno
import logging
import os
import threading
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable

from ._native import (KIND_CONN, KIND_LISTEN, KIND_WAKE, R_ACCEPT, R_ACCEPT_ERROR, R_EOF, R_ERROR,
                      R_READABLE, R_UDP, R_WRITABLE, check, configure_codec, ffi, lib)
from .admission import ADDR_ENTRY, fd_table_size
from .closing import Closer
from .connection import CLOSED, OPEN, Connection
from .deferred import Deferrals, calling_promise, is_deferred
from .dialing import Dialer
from .errors import OutputLimitExceeded
from .filesend import SendQueue
from .output import Output
from .poller import Poller
from .poller_uring import UringPoller
from .arena import Arena
from .reading import MAX_ROWS, Reader
from .stats import TURN_BUCKETS, warn_slow_turn
from .timers import Timer, TimerQueue
from .tls import TlsSession

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("reactor.loop")

ARENA_SIZE = 4 << 20        # per-loop read arena (pages are touched only as far as reads reach)
MAX_EVENTS = 1024
INBOX_BATCH = 1024          # cross-thread calls run per turn at most (the rest wait a turn)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class EventLoop:
    """One reactor thread.  Public: run_after, run_every, call_soon (all thread-safe), server,
    index, connection_count."""

    def __init__(self, server: Server, index: int) -> None:
        self.server = server
        self.index = index
        opts = server.options
        self.handler = server.callbacks
        self.protocol = server.protocol
        self.tls = opts.ssl is not None
        self.conns: dict[int, Connection] = {}
        self._timers = TimerQueue()
        self._deadline: float | None = None   # the earliest timer's deadline, kept current
        self._turn_end = monotonic()
        self._inbox: deque[tuple] = deque()
        self._inbox_lock = threading.Lock()
        self._inbox_closed = False
        self._wake_pending = False
        self.thread_id: int | None = None
        self._running = False
        self._stopping = False
        self.now = monotonic()
        self._slow = opts.slow_callback
        self.frame_timeout = opts.frame_timeout
        self._handshake_timeout = opts.handshake_timeout
        self._write_limit = opts.write_limit
        # counters read by metrics (plain ints on the hot path)
        self.accepted = 0
        self.rx = 0
        self.turn_counts = [0] * (len(TURN_BUCKETS) + 1)
        self.turn_sum = 0.0
        self._L: Any = None           # the native pg_loop struct, once opened
        self._poll = lib.pg_poll      # the backend's poll, chosen at open
        plan = None if self.tls else self.protocol.native_plan()
        self._plan = plan
        packet = self.protocol.packet if plan is None or plan.reply == "packet" else None
        self.deferrals = Deferrals(self, opts.max_pending_replies)
        self.out = Output(self, plan, packet, opts.write_high_water, opts.write_low_water,
                          self.deferrals)
        self.reader = Reader(self, plan, opts.view_threshold, opts.read_buffer_size,
                             getattr(self.protocol, "max_pending", 16 << 20))
        self.closer = Closer(self)
        self.dialer = Dialer(self)
        self.addresses: Any = None
        self.datagrams: dict[int, Any] = {}         # fd -> udp.UdpEndpoint (UDP sockets, udp.py)
        self.datagrams_dropped: dict[str, int] = {}  # datagrams dropped, by reason

    # ------------------------------------------------------------------------------------
    # set-up and tear-down
    # ------------------------------------------------------------------------------------
    def open(self, addresses: Any) -> None:
        """Create the poller, wake-up fd and native buffers (on start, never at construction).
        `addresses`: the server's AddressBook of accepted peers (the accepting loop fills it)."""
        self._nflags = fd_table_size()
        backend = UringPoller if self.server.backend == "io_uring" else Poller
        self.poller = self._poller = backend(self.server.options.read_buffer_size, self._nflags)
        wake = ffi.new("int[2]")
        check(lib.pg_wake_open(wake), "eventfd")
        self._wake_r, self._wake_w = wake[0], wake[1]
        self._poller.add(self._wake_r, KIND_WAKE)
        raw = ffi.new_allocator(should_clear_after_alloc=False)
        self.arena = Arena(ARENA_SIZE)
        self._events = raw("char[]", Poller.event_size() * MAX_EVENTS)
        self.rows = ffi.new("int32_t[]", 4 * MAX_ROWS)
        self.rows_mv = memoryview(ffi.buffer(self.rows)).cast("i")
        self._flags = ffi.new("unsigned char[]", self._nflags)
        self.addresses = addresses
        # One struct carries all of the above to the glue: each call passes a single pointer.
        L = self._L = ffi.new("pg_loop *")
        self._poller.attach(L)
        self._poll = self._poller.poll_fn
        L.events, L.maxev = self._events, MAX_EVENTS
        L.fdflags, L.nflags = self._flags, self._nflags
        L.arena, L.arena_size, L.read_max = self.arena.cdata, ARENA_SIZE, self.server.options.read_buffer_size
        L.rows, L.maxrows = self.rows, MAX_ROWS
        L.addrs, L.addr_size = addresses.table, ADDR_ENTRY
        self.out.bind(L, self._poller.flush_fn)
        self.codec = ffi.addressof(L, "codec")
        configure_codec(self.codec, self._plan.split if self._plan is not None else None)
        if self.reader.lines:
            threshold = self.server.options.view_threshold
            self.codec.lines = 1
            self.codec.small = (1 << 62) if threshold is None else threshold

    def add_listener(self, fd: int, nodelay: bool, flag: int) -> None:
        self.set_flag(fd, flag if nodelay else 0)
        self._poller.add(fd, KIND_LISTEN)

    def pause_listener(self, fd: int, seconds: float) -> None:
        """Stop accepting on `fd` for a while (accept is failing: EMFILE and friends)."""
        if self._poller.modify(fd, KIND_LISTEN, False, False) == 0:
            self.run_after(seconds, self._resume_listener, fd)

    def _resume_listener(self, fd: int) -> None:
        if not self._stopping:
            self._poller.modify(fd, KIND_LISTEN, True, False)

    def teardown(self) -> None:
        """Close what the loop owns; fds handed to it after it stopped are closed too."""
        with self._inbox_lock:
            self._inbox_closed = True
            left = list(self._inbox)
            self._inbox.clear()
        for fn, args in left:
            if fn == self.adopt_now:
                lib.pg_close(args[0])
                self.server.admission.released()
            elif fn == self.dialer.begin:
                self.dialer.fail(args[0], ConnectionAbortedError("the event loop stopped"))
        for fd in list(self.closer.draining):
            self.closer.drained(fd)
        for ep in list(self.datagrams.values()):
            ep.close()
        self._poller.close()
        lib.pg_close(self._wake_r)
        if self._wake_w != self._wake_r:
            lib.pg_close(self._wake_w)

    def set_flag(self, fd: int, flag: int) -> None:
        if 0 <= fd < self._nflags:
            self._flags[fd] = flag

    def arena_used(self) -> int:
        """Bytes the last poll read into the arena (its rows lie within them)."""
        return int(self._L.used)

    def arena_view(self, a: int, b: int) -> memoryview:
        return self.arena.mv[a:a + b]

    @staticmethod
    def would_block(err: int) -> bool:
        return err in _AGAIN

    # ------------------------------------------------------------------------------------
    # public, thread-safe scheduling
    # ------------------------------------------------------------------------------------
    def run_after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run fn(*args) once on this loop after `delay` seconds."""
        if not callable(fn):
            raise TypeError(f"run_after needs a callable, got {type(fn).__name__}")
        timer = Timer(monotonic() + max(0.0, delay), None, fn, args)
        self._schedule(timer)
        return timer

    def run_every(self, interval: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run fn(*args) on this loop every `interval` seconds until the Timer is cancelled."""
        if not callable(fn):
            raise TypeError(f"run_every needs a callable, got {type(fn).__name__}")
        if not interval > 0:
            raise ValueError(f"run_every interval must be positive, got {interval}")
        timer = Timer(monotonic() + interval, interval, fn, args)
        self._schedule(timer)
        return timer

    def connect(self, address: str, handler: Any, *, network: str = "tcp", protocol: Any = None,
                timeout: float | None = None, ssl: Any = None,
                server_hostname: str | None = None) -> Connection:
        """Dial `address` from this loop (thread-safe, never blocks; see reactor.dialing) and
        return the connection at once: `handler.on_connect(conn)` runs once connected, a failed
        dial runs only `handler.on_close(conn, error)` (TimeoutError after `timeout` s).
        `send()` before that queues in order.  `ssl`: a client SSLContext (or True), verified
        against `server_hostname` (default: the host dialed)."""
        return self.dialer.connect(address, handler, network=network, protocol=protocol,
                                   timeout=timeout, ssl=ssl, server_hostname=server_hostname)

    @property
    def stopping(self) -> bool:
        """The loop began to stop (it takes no new dials)."""
        return self._stopping

    @property
    def finished(self) -> bool:
        """The loop has stopped and released its resources."""
        return self._inbox_closed

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on this loop's thread at the next turn (this one's inbox drain, when
        called on the loop's thread before it)."""
        with self._inbox_lock:
            self._inbox.append((fn, args))
        if self.thread_id != threading.get_ident():
            self._wake()     # on the loop thread, a non-empty inbox makes the next poll not wait

    def call_here(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) now when on this loop's thread, else at its next turn."""
        if self.thread_id == threading.get_ident():
            fn(*args)
        else:
            self.call_soon(fn, *args)

    @property
    def connection_count(self) -> int:
        return len(self.conns)

    @property
    def backlog(self) -> int:
        """Cross-thread calls waiting for this loop (the least_connections balancer counts them)."""
        return len(self._inbox)

    @property
    def received_bytes(self) -> int:
        """Bytes read by this loop (arena reads counted natively, ring reads in Python)."""
        return self.rx + (self._L.nread if self._L is not None else 0)

    @property
    def sent_bytes(self) -> int:
        return self.out.sent_bytes

    @property
    def backpressure_pauses(self) -> int:
        return self.out.backpressure_pauses

    def in_loop_thread(self) -> bool:
        return self.thread_id == threading.get_ident()

    def _schedule(self, timer: Timer) -> None:
        if self.thread_id is None or self.thread_id == threading.get_ident():
            self._push_timer(timer)
        else:
            self.call_soon(self._push_timer, timer)

    def _push_timer(self, timer: Timer) -> None:
        self._timers.push(timer)
        if self._deadline is None or timer.when < self._deadline:
            self._deadline = timer.when

    def adopt(self, fd: int) -> None:
        """Take an accepted fd from another thread; closed at once if this loop has finished."""
        with self._inbox_lock:
            if not self._inbox_closed:
                self._inbox.append((self.adopt_now, (fd,)))
                fd = -1
        if fd >= 0:
            lib.pg_close(fd)
            self.server.admission.released()
        else:
            self._wake()

    def post_send(self, conn: Connection, data: Any, packet: bool) -> None:
        """send() from another thread: copy now (the caller may reuse its buffer), count it in
        pending_write, and queue it for the loop."""
        if type(data) is str:
            if not packet or self._plan is not None:
                raise TypeError("send() needs bytes-like data; encode str first or use a protocol "
                                "that accepts str")
        elif type(data) is not bytes and not is_deferred(data):
            try:
                data = memoryview(data).tobytes()
            except TypeError:
                if not packet or self._plan is not None:
                    raise TypeError(f"send() needs bytes-like data, not {type(data).__name__}") from None
        size = len(data) if isinstance(data, (bytes, str)) else 0
        with self._inbox_lock:
            conn._posted += size
            self._inbox.append((self._send_posted, (conn, data, packet, size, calling_promise())))
        self._wake()

    def _wake(self) -> None:
        if not self._wake_pending and self._running:
            self._wake_pending = True
            lib.pg_wake(self._wake_w)

    # ------------------------------------------------------------------------------------
    # the turn
    # ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until stopped (called by the Server on this loop's thread)."""
        self.thread_id = threading.get_ident()
        self._running = True
        try:
            self._poller.enable()       # io_uring: the ring binds to this thread
            while True:
                if self._stopping and self._stop_step():
                    break
                try:
                    self._turn()
                except KeyboardInterrupt:
                    if self._stopping:    # a second Ctrl-C: drop what is left, end now
                        self.server.hurry()
                    else:
                        self.server.stop()    # graceful: this loop keeps turning until flushed
                except Exception:     # a bug in pygev itself: keep serving, say so loudly
                    log.exception("internal error in event loop %d", self.index)
        finally:
            self._running = False
            self.teardown()

    def _turn(self) -> None:
        deadline = self._deadline      # earliest timer (a cancelled one just wakes us once)
        if self._inbox or self.out.pending_flush:
            timeout = 0
        elif deadline is None:
            timeout = 100 if self._stopping else -1
        else:
            timeout = int((deadline - self._turn_end) * 1000) + 1
            if timeout < 0:
                timeout = 0
            elif self._stopping and timeout > 100:
                timeout = 100
        nrows = self._poll(self._L, timeout)
        self._wake_pending = False    # the poll consumed the wake-up: the next post writes again
        self.now = now = monotonic()
        if nrows > 0:
            self.reader.dispatch(self.rows_mv[:4 * nrows].tolist())
        elif nrows < 0:
            raise OSError(-nrows, "poll: " + os.strerror(-nrows))
        t_read = monotonic()
        if self._inbox:
            self._drain_inbox()
        t_inbox = monotonic()
        if deadline is not None and deadline <= now + 0.0005:
            self._run_timers()
        t_timers = monotonic()
        if self.out.pending_flush:
            self.out.flush()
        if self.arena.end_turn():
            self._L.arena = self.arena.cdata
        self._turn_end = end = monotonic()
        spent = end - now
        self.turn_counts[bisect.bisect_left(TURN_BUCKETS, spent)] += 1
        self.turn_sum += spent
        if self._slow and spent > self._slow:
            warn_slow_turn(self.index, type(self.handler).__qualname__, spent, nrows,
                           (t_read - now, t_inbox - t_read, t_timers - t_inbox, end - t_timers))

    def orphan_row(self, fd: int, a: int, b: int, code: int) -> None:
        """A row without a connection: accepts, accept errors, lingering closes, UDP sockets."""
        if code == R_ACCEPT:
            self.server.admission.on_accept(self, a, b)
        elif code == R_ACCEPT_ERROR:
            self.server.admission.on_accept_error(self, fd, a)
        elif code in (R_EOF, R_ERROR):
            self.closer.drained(fd)
        elif code in (R_WRITABLE, R_READABLE):
            self.dialer.ready(fd)             # a dial in progress: connected or failed
        elif code == R_UDP:
            ep = self.datagrams.get(fd)
            if ep is not None:
                ep.ready(a)
        # R_WAKE: the inbox is drained after the rows; rows of closed fds are dropped

    # ------------------------------------------------------------------------------------
    # output (called by Connection and by handlers' replies)
    # ------------------------------------------------------------------------------------
    def send(self, conn: Connection, data: Any, packet: bool) -> None:
        """Queue output on the loop thread: through the protocol (packet() or native framing)
        when asked, else as raw bytes.  A connection whose unsent output is past write_limit
        (a peer that does not read while others send to it) is dropped instead."""
        ring = conn._out
        if ring is not None and len(ring) > self._write_limit and \
                getattr(ring, "memory", len(ring)) > self._write_limit:   # queued files are not
            self._over_limit(conn)
            return
        if packet:
            self.out.reply(conn, data, "send()")
        else:
            self.out.raw(conn, data)

    def _over_limit(self, conn: Connection) -> None:
        log.warning("dropping %r: %d bytes of unsent output exceed write_limit (%d)", conn,
                    self.pending_write(conn), self._write_limit)
        error = OutputLimitExceeded(f"unsent output exceeds write_limit ({self._write_limit})")
        self.closer.abort(conn, error, "write_limit")

    def _send_posted(self, conn: Connection, data: Any, packet: bool, size: int,
                     promise: Any) -> None:
        with self._inbox_lock:
            conn._posted -= size
        if conn._state == OPEN and not conn._shut:
            try:
                if promise is not None and conn._held is not None:
                    self.deferrals.send_within(conn, promise, data, packet)   # before its reply
                else:
                    self.send(conn, data, packet)
            except Exception as exc:
                self.closer.fail(conn, exc)

    def pending_write(self, conn: Connection) -> int:
        n = self.out.pending(conn) + conn._posted + self.protocol.pending_output(conn)
        if conn._tls is not None:
            n += conn._tls.pending
        return n

    def update_interest(self, conn: Connection) -> None:
        """Read while open, not paused and before the peer's FIN; write while output waits."""
        if conn._state == CLOSED:
            return
        readable = conn._state == OPEN and not conn._paused and not conn._eof
        out = conn._out
        writable = out is not None and (type(out) is not SendQueue or not out.stalled)
        if writable and conn._state != OPEN:
            self.closer.lingering.add(conn)
        self._poller.modify(conn._fd, KIND_CONN, readable, writable)

    def set_reading(self, conn: Connection, on: bool) -> None:
        if conn._state == CLOSED:
            return
        conn._paused = (conn._paused & ~2) if on else (conn._paused | 2)
        self.update_interest(conn)

    def shutdown_write(self, conn: Connection) -> None:
        if conn._state != OPEN or conn._shut:
            return
        conn._shut = 1
        self.out.mark(conn)           # the flush sends what is queued, then the FIN

    # ------------------------------------------------------------------------------------
    # connections: open and close
    # ------------------------------------------------------------------------------------
    def adopt_now(self, fd: int) -> None:
        """Take ownership of an accepted fd: register it and run the connect callbacks."""
        if self._stopping:
            lib.pg_close(fd)
            self.server.admission.released()
            return
        conn = Connection(self, fd, self.now)
        if self.tls:
            conn._tls = TlsSession(self.server.options.ssl)
            if self._handshake_timeout is not None:
                conn._deadline = self.now + self._handshake_timeout
        self.conns[fd] = conn
        self.set_flag(fd, 0)
        try:
            self._poller.add(fd, KIND_CONN)
        except OSError as exc:
            self.conns.pop(fd, None)
            lib.pg_close(fd)
            self.server.admission.released()
            log.warning("cannot register connection fd %d: %s", fd, exc)
            return
        self.server.admission.configure(fd)
        try:
            self.protocol.connection_made(conn)
            self.handler.on_connect(conn)
        except Exception as exc:
            self.closer.fail(conn, exc)

    # ------------------------------------------------------------------------------------
    # inbox, timers, housekeeping, stop
    # ------------------------------------------------------------------------------------
    def _drain_inbox(self) -> None:
        """Run a bounded batch of cross-thread calls (a sender in a tight loop cannot starve
        polling and flushing)."""
        inbox = self._inbox
        lock = self._inbox_lock
        for _ in range(INBOX_BATCH):
            with lock:
                if not inbox:
                    return
                fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("error in a call posted to loop %d", self.index)

    def _run_timers(self) -> None:
        self._deadline = None           # timers scheduled by the callbacks set it again
        self._deadline = self._timers.run_due(monotonic(), self._slow, self.index)

    def start_housekeeping(self) -> None:
        self.run_every(self.closer.sweep_period(), self.closer.sweep)

    def begin_stop(self, timeout: float | None) -> None:
        """Stop: no new reads; flush for at most `timeout` seconds, then close what is left."""
        if self._stopping:
            return
        self._stopping = True
        if self.index == 0:
            for sock in self.server.admission.listeners:
                self._poller.forget(sock.fileno())     # io_uring: cancel the accept first
            self.server.admission.close_listeners()
        self.dialer.stop()
        for ep in list(self.datagrams.values()):
            ep.stop()
        self.closer.begin_stop(timeout)

    def _stop_step(self) -> bool:
        """True when this loop may exit: everything flushed and drained, or the deadline passed."""
        if self.out.pending_flush or self._inbox:
            return False
        return self.closer.stopped()


__all__ = ["EventLoop"]
