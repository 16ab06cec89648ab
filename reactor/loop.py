"""EventLoop: one thread, one poller, one turn at a time.

A turn is: one native call that waits and reads every ready socket into the loop's arena
(rows of ints come back: fd, offset, length, what happened) -> dispatch each row to its
connection's protocol and handler -> cross-thread work posted to the inbox -> due timers ->
one native call that flushes every connection's queued output (one sendmsg each).

Messages are memoryviews over the arena, valid for the turn; replies that are such views are
queued as (offset, length) and never copied.  Only bytes that outlive the turn are copied, once:
an incomplete frame into the connection's input ring, output the kernel did not take into its
output ring.  Idle connections hold neither.
"""
from __future__ import annotations

import bisect
import errno
import logging
import os
import ssl
import threading
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable

from ringbuf import RingBuffer, ViewBuffer

from .connection import CLOSED, CLOSING, OPEN, Connection
from .poller import KIND_CONN, KIND_LISTEN, KIND_WAKE, Poller, check, ffi, lib
from .protocol import ProtocolError
from .timers import Timer, TimerQueue
from .tls import TlsSession

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("reactor.loop")

# rows from pg_poll / pg_split
R_DATA, R_FRAME, R_PARTIAL, R_EOF = lib.PG_R_DATA, lib.PG_R_FRAME, lib.PG_R_PARTIAL, lib.PG_R_EOF
R_ERROR, R_READABLE, R_WRITABLE = lib.PG_R_ERROR, lib.PG_R_READABLE, lib.PG_R_WRITABLE
R_ACCEPT, R_ACCEPT_ERROR, R_WAKE, R_FRAME_ERROR = (lib.PG_R_ACCEPT, lib.PG_R_ACCEPT_ERROR,
                                                   lib.PG_R_WAKE, lib.PG_R_FRAME_ERROR)
# output part kinds for pg_flush
O_ARENA, O_SCRATCH, O_PTR, O_UINT_BE, O_UINT_LE, O_FRAME = (
    lib.PG_O_ARENA, lib.PG_O_SCRATCH, lib.PG_O_PTR, lib.PG_O_UINT_BE, lib.PG_O_UINT_LE, lib.PG_O_FRAME)
F_PYREAD, F_NODELAY = lib.PG_F_PYREAD, lib.PG_F_NODELAY

MODE_RAW, MODE_NATIVE, MODE_GENERIC = 0, 1, 2

ARENA_SIZE = 4 << 20        # per-loop read arena (pages are touched only as far as reads reach)
SCRATCH_SIZE = 256 << 10    # per-turn copies of small replies
COPY_MAX = 2048             # replies up to this size are copied into scratch; larger ones pinned
MAX_EVENTS = 1024
MAX_ROWS = 16384
MAX_PTRS = 4096
LINGER = 5.0                # a closing connection that makes no write progress this long is dropped
TURN_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_RESET = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT)


def _native_protocols() -> tuple[type, ...]:
    """Codec classes whose frames the native code splits (exact types: a subclass may override)."""
    from . import codec
    return (codec.LineProtocol, codec.DelimiterProtocol, codec.FixedLengthProtocol,
            codec.LengthFieldProtocol)


def _fd_table_size() -> int:
    try:
        import resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    except (ImportError, ValueError, OSError):
        hard = 65536
    if hard < 0 or hard > (1 << 22):
        hard = 1 << 22
    return max(hard, 1024)


class EventLoop:
    """One reactor thread.  Public: run_after, run_every, call_soon (all thread-safe), server,
    index, connection_count."""

    def __init__(self, server: Server, index: int) -> None:
        self.server = server
        self.index = index
        self._conns: dict[int, Connection] = {}
        self._timers = TimerQueue()
        self._deadline: float | None = None   # the earliest timer's deadline, kept current
        self._turn_end = monotonic()
        self._inbox: deque[tuple] = deque()
        self._wake_pending = False
        self._thread_id: int | None = None
        self._running = False
        self._stopping = False
        self._stop_deadline: float | None = None
        self._dirty: list[Connection] = []
        self._lingering: set[Connection] = set()
        self.now = monotonic()
        # counters read by metrics (plain ints on the hot path)
        self.accepted = 0
        self._rx = 0
        self._L: Any = None           # the native pg_loop struct, once opened
        self.sent_bytes = 0
        self.backpressure_pauses = 0
        self.closed_by_reason: dict[str, int] = {}
        self.turn_counts = [0] * (len(TURN_BUCKETS) + 1)
        self.turn_sum = 0.0
        self._configure(server)

    # ------------------------------------------------------------------------------------
    # set-up and tear-down
    # ------------------------------------------------------------------------------------
    def _configure(self, server: Server) -> None:
        from .protocol import DefaultProtocol
        handler, protocol = server.handler, server.protocol
        self._on_message = handler.on_message
        self._handler = handler
        self._protocol = protocol
        self._unpacket = protocol.unpacket
        self._packet: Callable[..., Any] | None = protocol.packet
        # How a reply that is the very view handed to on_message is queued without a copy:
        # `_echo_kind` is O_ARENA (an arena range) or O_FRAME (pg_flush adds the codec's
        # header/suffix); None when the protocol's packet() must run.  When header + payload +
        # suffix are byte for byte the bytes that arrived (`_echo_merge`), the reply is the arena
        # range [a - pre, a + b + post), and consecutive echoed frames merge into one range.
        self._echo_kind: int | None = None
        self._echo_pre = self._echo_post = 0
        self._echo_merge = False
        self._hdr_width = 0
        self._hdr_little = 0
        self._suffix = b""
        self._native_spec: dict | None = None
        ptype = type(protocol)
        if ptype is DefaultProtocol:
            self._mode = MODE_RAW
            self._packet = None
            self._echo_kind = O_ARENA
            self._echo_merge = True
        elif ptype in _native_protocols() and protocol._native_codec() is not None:  # type: ignore[attr-defined]
            self._mode = MODE_NATIVE
            spec = self._native_spec = protocol._native_codec()  # type: ignore[attr-defined]
            pack = protocol._native_pack()  # type: ignore[attr-defined]
            if pack is not None:
                self._echo_kind = O_ARENA
                self._echo_merge = True
                if pack[0] == "uint":       # simple header: the one we'd write is the one that came
                    self._hdr_width = self._echo_pre = pack[1]
                    self._hdr_little = int(pack[2] == "little")
                elif pack[0] == "suffix":
                    self._suffix = bytes(pack[1])
                    if spec.get("strip_cr"):   # a stripped \r: the reply differs from the input
                        self._echo_kind = O_FRAME
                        self._echo_merge = False
                    else:
                        self._echo_post = len(self._suffix)
        else:
            self._mode = MODE_GENERIC
        self._tls_context = server.ssl
        if self._tls_context is not None:   # decryption comes first: the Python protocol path
            self._mode = MODE_GENERIC
            self._echo_kind = None
            self._native_spec = None            # the C splitter must not see ciphertext
        self._max_pending = getattr(protocol, "max_pending", 16 << 20)
        self._read_max = server.read_buffer_size
        self._high = server.write_high_water
        self._low = server.write_low_water
        self._idle = server.idle_timeout
        self._slow = server.slow_callback

    def _open(self) -> None:
        """Create the poller, wake-up fd and native buffers (on start, never at construction)."""
        self._poller = Poller()
        wake = ffi.new("int[2]")
        check(lib.pg_wake_open(wake), "eventfd")
        self._wake_r, self._wake_w = wake[0], wake[1]
        self._poller.add(self._wake_r, KIND_WAKE)
        raw = ffi.new_allocator(should_clear_after_alloc=False)
        self._arena = raw("char[]", ARENA_SIZE)
        self._arena_mv = memoryview(ffi.buffer(self._arena))
        self._arena_obj = self._arena_mv.obj
        self._arena_addr = int(ffi.cast("intptr_t", self._arena))
        self._scratch = raw("char[]", SCRATCH_SIZE)
        self._scratch_mv = memoryview(ffi.buffer(self._scratch))
        self._scratch_pos = 0
        self._ptrs = ffi.new("char *[]", MAX_PTRS)
        self._keep: list[Any] = []
        self._events = raw("char[]", Poller.event_size() * MAX_EVENTS)
        self._rows = ffi.new("int32_t[]", 4 * MAX_ROWS)
        self._rows_mv = memoryview(ffi.buffer(self._rows)).cast("i")
        self._nflags = _fd_table_size()
        self._flags = ffi.new("unsigned char[]", self._nflags)
        self._short = ffi.new("int64_t[]", 3 * 1024)
        self._nsplit = ffi.new("int *")
        self._suffix_buf = ffi.new("char[]", self._suffix or b"\0")
        # One struct carries all of the above to the glue: each call passes a single pointer.
        L = self._L = ffi.new("pg_loop *")
        L.pfd = self._poller.fd
        L.events, L.maxev = self._events, MAX_EVENTS
        L.fdflags, L.nflags = self._flags, self._nflags
        L.arena, L.arena_size, L.read_max = self._arena, ARENA_SIZE, self._read_max
        L.rows, L.maxrows = self._rows, MAX_ROWS
        L.scratch, L.ptrs = self._scratch, self._ptrs
        L.hdr_width, L.hdr_little = self._hdr_width, self._hdr_little
        L.suffix, L.suffix_len = self._suffix_buf, len(self._suffix)
        L.shortw = self._short
        self._codec = ffi.addressof(L, "codec")
        for key, value in (self._native_spec or {}).items():
            if key == "delim":
                self._codec.delim_len = len(value)
                ffi.memmove(self._codec.delim, bytes(value), len(value))
            else:
                setattr(self._codec, key, value)

    def _add_listener(self, fd: int, nodelay: bool) -> None:
        if fd < self._nflags:
            self._flags[fd] = F_NODELAY if nodelay else 0
        self._poller.add(fd, KIND_LISTEN)

    def _pause_listener(self, fd: int, seconds: float) -> None:
        """Stop accepting on `fd` for a while (accept is failing: EMFILE and friends)."""
        if self._poller.modify(fd, KIND_LISTEN, False, False) == 0:
            self.run_after(seconds, self._resume_listener, fd)

    def _resume_listener(self, fd: int) -> None:
        if not self._stopping:
            self._poller.modify(fd, KIND_LISTEN, True, False)

    def _teardown(self) -> None:
        self._poller.close()
        lib.pg_close(self._wake_r)
        if self._wake_w != self._wake_r:
            lib.pg_close(self._wake_w)

    # ------------------------------------------------------------------------------------
    # public, thread-safe scheduling
    # ------------------------------------------------------------------------------------
    def run_after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run fn(*args) once on this loop after `delay` seconds."""
        timer = Timer(monotonic() + max(0.0, delay), None, fn, args)
        self._schedule(timer)
        return timer

    def run_every(self, interval: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run fn(*args) on this loop every `interval` seconds until the Timer is cancelled."""
        if interval <= 0:
            raise ValueError(f"run_every interval must be positive, got {interval}")
        timer = Timer(monotonic() + interval, interval, fn, args)
        self._schedule(timer)
        return timer

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on this loop's thread at the next turn."""
        self._post(fn, *args)

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    @property
    def received_bytes(self) -> int:
        """Bytes read by this loop (arena reads counted natively, ring reads in Python)."""
        return self._rx + (self._L.nread if self._L is not None else 0)

    def in_loop_thread(self) -> bool:
        return self._thread_id == threading.get_ident()

    def _schedule(self, timer: Timer) -> None:
        if self._thread_id is None or self._thread_id == threading.get_ident():
            self._push_timer(timer)
        else:
            self._post(self._push_timer, timer)

    def _push_timer(self, timer: Timer) -> None:
        self._timers.push(timer)
        if self._deadline is None or timer.when < self._deadline:
            self._deadline = timer.when

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a call for the loop thread and wake it (one wake-up per burst)."""
        self._inbox.append((fn, args))
        self._wake()

    def _post_send(self, conn: Connection, data: Any, packet: bool) -> None:
        if isinstance(data, str) and (not packet or self._packet is None):
            raise TypeError("send() needs bytes-like data; encode str first or use a protocol "
                            "that accepts str")
        if type(data) is not bytes and not isinstance(data, str):
            try:
                data = bytes(memoryview(data))  # the caller may reuse its buffer once send() returns
            except TypeError:
                pass                            # a message object for the protocol's packet()
        self._inbox.append((self._send_posted, (conn, data, packet)))
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
        self._thread_id = threading.get_ident()
        self._running = True
        try:
            while True:
                if self._stopping and self._stop_step():
                    break
                try:
                    self._turn()
                except KeyboardInterrupt:
                    self.server.stop()    # graceful: this loop keeps turning until flushed
                except Exception:     # a bug in pygev itself: keep serving, say so loudly
                    log.exception("internal error in event loop %d", self.index)
        finally:
            self._running = False
            self._teardown()

    def _turn(self) -> None:
        deadline = self._deadline      # earliest timer (a cancelled one just wakes us once)
        if self._inbox or self._dirty:
            timeout = 0
        elif deadline is None:
            timeout = 100 if self._stopping else -1
        else:
            timeout = int((deadline - self._turn_end) * 1000) + 1
            if timeout < 0:
                timeout = 0
            elif self._stopping and timeout > 100:
                timeout = 100
        nread = lib.pg_poll(self._L, timeout)
        self.now = now = monotonic()
        if nread > 0:
            self._dispatch(nread)
        elif nread < 0:
            raise OSError(-nread, "poll: " + os.strerror(-nread))
        if self._inbox:
            self._drain_inbox()
        if deadline is not None and deadline <= now + 0.0005:
            self._run_timers()
        if self._dirty:
            self._flush()
        self._turn_end = end = monotonic()
        spent = end - now
        self.turn_counts[bisect.bisect_left(TURN_BUCKETS, spent)] += 1
        self.turn_sum += spent
        if self._slow and spent > self._slow and nread > 0:
            log.warning("slow loop turn: %.3f s handling %d events in loop %d (%s.on_message or a "
                        "callback is blocking the event loop)", spent, nread,
                        self.index, type(self._handler).__qualname__)

    def _dispatch(self, n: int) -> None:
        """Hand this turn's rows to their connections.  Data rows take the shortest path the
        protocol allows; everything else goes through `_on_event`."""
        if self._mode == MODE_RAW:
            self._dispatch_raw(n)
            return
        rows = self._rows_mv[:4 * n].tolist()
        conns = self._conns
        arena = self._arena_mv
        now = self.now
        generic = self._mode == MODE_GENERIC
        on_message = self._on_message
        dirty_append = self._dirty.append
        echo_kind = self._echo_kind
        pre = self._echo_pre
        extra = pre + self._echo_post
        merge = self._echo_merge
        last_fd = -1
        conn: Any = None
        it = iter(rows)
        for fd, a, b, code in zip(it, it, it, it):
            if fd != last_fd:          # frames of one read come in a run: look the fd up once
                last_fd = fd
                conn = conns.get(fd)
                if conn is not None:
                    conn._last = now
            if code > 2 or conn is None:
                self._on_event(fd, a, b, code, conn)
            elif conn._state:
                continue
            elif generic:
                self._feed(conn, arena[a:a + b])
            else:
                view = arena[a:a + b]
                try:
                    res = on_message(conn, None, view)
                    if res is view and echo_kind is not None:
                        parts = conn._parts
                        a -= pre
                        b += extra
                        if parts is None:
                            conn._parts = [echo_kind, a, b]
                            dirty_append(conn)
                        elif merge and parts[-2] + parts[-1] == a and parts[-3] == echo_kind:
                            parts[-1] += b
                        else:
                            parts += (echo_kind, a, b)
                    elif res is not None and conn._state == OPEN:
                        self._send(conn, res, True)
                except Exception as exc:
                    self._fail(conn, exc)

    def _dispatch_raw(self, n: int) -> None:
        """DefaultProtocol: one read is one message; a reply that is that view is queued as
        its arena range.  (The same as `_dispatch`, minus what framing needs, per message.)"""
        rows = self._rows_mv[:4 * n].tolist()
        conns = self._conns
        arena = self._arena_mv
        now = self.now
        on_message = self._on_message
        dirty_append = self._dirty.append
        it = iter(rows)
        for fd, a, b, code in zip(it, it, it, it):
            conn = conns.get(fd)
            if code != R_DATA or conn is None:
                self._on_event(fd, a, b, code, conn)
            elif not conn._state:
                conn._last = now
                view = arena[a:a + b]
                try:
                    res = on_message(conn, None, view)
                    if res is view:
                        parts = conn._parts
                        if parts is None:
                            conn._parts = [O_ARENA, a, b]
                            dirty_append(conn)
                        else:
                            parts += (O_ARENA, a, b)
                    elif res is not None:
                        self._send(conn, res, True)
                except Exception as exc:
                    self._fail(conn, exc)

    def _on_event(self, fd: int, a: int, b: int, code: int, conn: Connection | None) -> None:
        """Every row but a message: accepts, leftovers, writability, EOF, errors."""
        if conn is None:
            if code == R_ACCEPT:
                self.server._on_accept(self, a, b)
            elif code == R_ACCEPT_ERROR:
                self.server._on_accept_error(self, fd, a)
            # R_WAKE: the inbox is drained after the rows; rows of closed fds are dropped
        elif code == R_PARTIAL:
            if conn._state == OPEN:
                self._stash(conn, self._arena_mv[a:a + b])
                self._split_ring(conn)
        elif code == R_WRITABLE:
            self._on_writable(conn)
        elif code == R_READABLE:
            if conn._state == OPEN:
                conn._last = self.now
                self._read_into_ring(conn)
        elif code == R_EOF:
            self._close(conn, None, "peer")
        elif code == R_ERROR:
            self._abort_errno(conn, a)
        elif code == R_FRAME_ERROR:
            self._bad_input(conn, self._frame_error_text(a, b))

    # ------------------------------------------------------------------------------------
    # input beyond the fast path
    # ------------------------------------------------------------------------------------
    def _frame_error_text(self, reason: int, length: int) -> str:
        spec = self._native_spec or {}
        if reason == lib.PG_FRAME_TOO_LONG:
            return f"frame of {length} bytes exceeds the maximum frame length {spec.get('max_frame')}"
        return f"bad frame length field (frame length {length})"

    def _stash(self, conn: Connection, view: memoryview) -> None:
        """Keep bytes that outlive the turn in the connection's input ring (copied once)."""
        ring = conn._in
        if ring is None:
            ring = conn._in = RingBuffer(max(len(view), self._read_max))
        ring.write(view)
        fd = conn._fd
        if fd < self._nflags and conn._tls is None:
            self._flags[fd] = F_PYREAD      # the next read goes straight into the ring

    def _ring_drained(self, conn: Connection) -> None:
        """Leftovers are consumed: reads go back to the shared arena (the empty ring is kept
        for reuse until the connection goes quiet)."""
        fd = conn._fd
        if 0 <= fd < self._nflags:
            self._flags[fd] = 0

    def _read_into_ring(self, conn: Connection) -> None:
        ring = conn._in
        if ring is None:
            self._ring_drained(conn)
            return
        res = ring._read_from(conn._fd, self._read_max)
        if res > 0:
            self._rx += res
            conn._last = self.now
            if self._mode == MODE_NATIVE:
                self._split_ring(conn)
            else:
                self._unpack(conn, ring)
        elif res == 0:
            self._close(conn, None, "peer")
        elif -res not in _AGAIN:
            self._abort_errno(conn, -res)

    def _split_ring(self, conn: Connection) -> None:
        """Split the built-in codec's frames out of the input ring with the native splitter."""
        ring = conn._in
        on_message = self._on_message
        rows_mv = self._rows_mv
        while conn._state == OPEN:
            view = ring.peek_all()
            size = len(view)
            if size == 0:
                break
            consumed = lib.pg_split(self._codec, ffi.from_buffer(view), size, conn._fd,
                                    self._rows, MAX_ROWS, self._nsplit)
            k = self._nsplit[0]
            it = iter(rows_mv[:4 * k].tolist())
            for _fd, a, b, code in zip(it, it, it, it):
                if code == R_FRAME_ERROR:
                    self._bad_input(conn, self._frame_error_text(a, b))
                    return
                if conn._state != OPEN:
                    return
                try:
                    res = on_message(conn, None, view[a:a + b])
                    if res is not None and conn._state == OPEN:
                        self._send(conn, res, True)
                except Exception as exc:
                    self._fail(conn, exc)
                    return
            if consumed > 0:
                ring.retrieve(consumed)
            if consumed <= 0 or k < MAX_ROWS:
                break
        if conn._state == OPEN and not len(ring):
            self._ring_drained(conn)

    def _feed(self, conn: Connection, view: memoryview) -> None:
        """Generic protocols: run unpacket over the new bytes (plus any leftovers)."""
        tls = conn._tls
        if tls is not None:
            try:
                plain = tls.feed(view)
            except ssl.SSLError as exc:
                self._enqueue(conn, tls.take_output())     # the alert, if any
                self._bad_input(conn, f"TLS error: {exc}", exc)
                return
            self._enqueue(conn, tls.take_output())
            if tls.closed_by_peer:            # deliver what came with close_notify, then close
                if plain:
                    self._feed_plain(conn, memoryview(plain))
                self._close(conn, None, "peer")
                return
            if not plain:
                return
            view = memoryview(plain)
        self._feed_plain(conn, view)

    def _feed_plain(self, conn: Connection, view: memoryview) -> None:
        """unpacket over plaintext: straight from the view, or behind leftovers in the ring."""
        ring = conn._in
        if ring is None or not len(ring):
            buf = ViewBuffer(view)
            self._unpack(conn, buf)
            if len(buf) and conn._state == OPEN:
                self._stash(conn, buf.peek_all())
                self._check_pending(conn)
        else:
            ring.write(view)
            self._unpack(conn, ring)

    def _unpack(self, conn: Connection, buf: Any) -> None:
        unpacket = self._unpacket
        on_message = self._on_message
        while conn._state == OPEN:
            before = len(buf)
            try:
                msg = unpacket(conn, buf)
                if msg is None:
                    break
                if len(buf) == before:
                    raise ProtocolError(f"{type(self._protocol).__name__}.unpacket returned a message "
                                        "without consuming input")
                res = on_message(conn, msg[0], msg[1])
                if res is not None and conn._state == OPEN:
                    self._send(conn, res, True)
            except ProtocolError as exc:
                self._bad_input(conn, str(exc), exc)
                return
            except Exception as exc:
                self._fail(conn, exc)
                return
        if conn._in is buf:
            if not len(buf):
                self._ring_drained(conn)
            else:
                self._check_pending(conn)

    def _check_pending(self, conn: Connection) -> None:
        if conn._in is not None and len(conn._in) > self._max_pending and conn._state == OPEN:
            self._bad_input(conn, f"{len(conn._in)} unparsed bytes exceed the protocol's max_pending "
                                  f"({self._max_pending})")

    # ------------------------------------------------------------------------------------
    # output
    # ------------------------------------------------------------------------------------
    def _send(self, conn: Connection, data: Any, packet: bool) -> None:
        """Queue output on the loop thread: through packet() when asked, then by reference
        (arena views, immutable or large buffers) or copied into scratch (small ones)."""
        if packet and self._packet is not None:
            data = self._packet(conn, data)
        if data is None:
            return
        if conn._tls is not None:
            if type(data) is str:
                raise TypeError("send() needs bytes-like data; encode str first")
            conn._tls.encrypt(data)
            data = conn._tls.take_output()
        self._enqueue(conn, data)

    def _enqueue(self, conn: Connection, data: Any) -> None:
        """Queue bytes as they are: by reference or copied into scratch."""
        t = type(data)
        if t is memoryview:
            if data.obj is self._arena_obj and data.contiguous:
                n = data.nbytes
                if not n:
                    return
                off = int(ffi.cast("intptr_t", ffi.from_buffer(data))) - self._arena_addr
                self._queue(conn, (O_ARENA, off, n))
                return
            if type(data.obj) is not type(self._arena_obj) or not data.contiguous:
                data = bytes(data)         # a user buffer: copy now, it may change after send()
            elif data.format != "B" or data.ndim != 1:
                data = data.cast("B")
        elif t is str:
            raise TypeError("send() needs bytes-like data; encode str first or use a protocol "
                            "that accepts str")
        elif t is not bytes:
            data = bytes(data)
        n = len(data) if type(data) is bytes else data.nbytes
        if not n:
            return
        if n <= COPY_MAX:
            pos = self._scratch_pos
            if pos + n > SCRATCH_SIZE:
                self._flush()
                pos = self._scratch_pos
            self._scratch_mv[pos:pos + n] = data
            self._scratch_pos = pos + n
            self._queue(conn, (O_SCRATCH, pos, n))
        else:
            keep = self._keep
            if len(keep) >= MAX_PTRS:
                self._flush()
            idx = len(keep)
            self._ptrs[idx] = ptr = ffi.from_buffer(data)
            keep.append((ptr, data))
            self._queue(conn, (O_PTR, idx, n))

    def _queue(self, conn: Connection, part: tuple) -> None:
        conn._last = self.now      # output counts as activity (echoes were stamped on reading)
        parts = conn._parts
        if parts is None:
            conn._parts = list(part)
            self._dirty.append(conn)
        else:
            parts += part

    def _send_posted(self, conn: Connection, data: Any, packet: bool) -> None:
        if conn._state == OPEN and not conn._shut:
            try:
                self._send(conn, data, packet)
            except Exception as exc:
                self._fail(conn, exc)

    def _part_view(self, kind: int, a: int, b: int) -> Any:
        """The bytes behind one queued output part (for the slow paths)."""
        if kind == O_ARENA:
            return self._arena_mv[a:a + b]
        if kind == O_SCRATCH:
            return self._scratch_mv[a:a + b]
        if kind == O_PTR:
            return self._keep[a][1]
        if kind == O_FRAME:
            width = self._hdr_width
            head = b.to_bytes(width, "little" if self._hdr_little else "big") if width else b""
            return b"".join((head, self._arena_mv[a:a + b], self._suffix))
        return a.to_bytes(b, "little" if kind == O_UINT_LE else "big")

    def _spill(self, conn: Connection, parts: list, skip: int) -> None:
        """Copy what the kernel did not take (all but the first `skip` bytes) into the output ring."""
        ring = conn._out
        if ring is None:
            ring = conn._out = RingBuffer(65536)
        for i in range(0, len(parts), 3):
            view = self._part_view(parts[i], parts[i + 1], parts[i + 2])
            n = len(view)
            if skip >= n:
                skip -= n
                continue
            ring.write(view[skip:] if skip else view)
            skip = 0

    def _flush(self) -> None:
        """Write every dirty connection's queued output: one native call, one sendmsg each.
        Python only hears about the connections the kernel did not take everything from."""
        dirty = self._dirty[:]
        self._dirty.clear()           # in place: the dispatch loop holds its bound append
        spec: list[int] = []
        groups = []
        finishing = []
        for conn in dirty:
            parts = conn._parts
            conn._parts = None
            if parts is None:                     # closing with nothing new to write
                if conn._state != CLOSED:
                    self._after_write(conn)
                continue
            if conn._state or conn._shut or conn._out is not None:
                if conn._state == CLOSED:
                    continue
                if conn._out is not None and len(conn._out):
                    self._spill(conn, parts, 0)   # keep order behind output already waiting
                    self._write_ring(conn)
                    continue
                finishing.append(conn)            # FIN or close once this is written
            spec += (conn._fd, len(parts) // 3)
            spec += parts
            groups.append(conn)
        if groups:
            if 3 * len(groups) > len(self._short):
                self._short = self._L.shortw = ffi.new("int64_t[]", 3 * len(groups))
            self.sent_bytes += lib.pg_flush(self._L, spec, len(spec))
            nshort = self._L.nshort
            if nshort:
                self._short_writes(groups, spec, ffi.unpack(self._short, 3 * nshort))
            for conn in finishing:
                if conn._out is None and conn._state != CLOSED:
                    self._after_write(conn)
        self._keep.clear()
        self._scratch_pos = 0

    def _short_writes(self, groups: list[Connection], spec: list[int], short: list[int]) -> None:
        """Connections whose output the kernel did not take whole: keep the rest, or drop them."""
        starts = []
        pos = 0
        for _conn in groups:             # where each group's parts begin in the flat spec
            starts.append(pos + 2)
            pos += 2 + 3 * spec[pos + 1]
        it = iter(short)
        for index, written, _total in zip(it, it, it):
            conn = groups[index]
            if written < 0:
                self._abort_errno(conn, -written)
                continue
            start = starts[index]
            self._spill(conn, spec[start:start + 3 * spec[start - 1]], written)
            self._want_write(conn)

    def _want_write(self, conn: Connection) -> None:
        """Output is waiting in the ring: arm write interest; past the high-water mark, stop reading."""
        if conn._state != OPEN:
            self._lingering.add(conn)
        elif not conn._paused and len(conn._out) > self._high:
            conn._paused = True
            self.backpressure_pauses += 1
        self._poller.modify(conn._fd, KIND_CONN, conn._state == OPEN and not conn._paused, True)

    def _write_ring(self, conn: Connection) -> None:
        ring = conn._out
        res = ring._write_to(conn._fd)
        if res > 0:
            self.sent_bytes += res
            conn._last = self.now
        elif res < 0 and -res not in _AGAIN:
            self._abort_errno(conn, -res)
            return
        if len(ring):
            if conn._paused and len(ring) <= self._low:
                conn._paused = False
            self._want_write(conn)
        else:
            conn._out = None
            conn._paused = False
            if conn._state == OPEN:
                self._poller.modify(conn._fd, KIND_CONN, True, False)
            self._after_write(conn)

    def _on_writable(self, conn: Connection) -> None:
        if conn._out is not None and conn._state != CLOSED:
            self._write_ring(conn)

    def _after_write(self, conn: Connection) -> None:
        """Everything queued has been written: carry out a pending FIN or close."""
        if conn._out is not None and len(conn._out):
            return
        if conn._shut == 1:
            conn._shut = 2
            lib.pg_shutdown_write(conn._fd)
        if conn._state == CLOSING:
            self._finish(conn)

    def _pending_write(self, conn: Connection) -> int:
        n = len(conn._out) if conn._out is not None else 0
        parts = conn._parts
        if parts:
            for i in range(0, len(parts), 3):
                kind, size = parts[i], parts[i + 2]
                n += size + (self._hdr_width + len(self._suffix) if kind == O_FRAME else 0)
        return n

    def _shutdown_write(self, conn: Connection) -> None:
        if conn._state != OPEN or conn._shut:
            return
        conn._shut = 1
        if conn._parts is None and conn._out is None:
            self._after_write(conn)

    # ------------------------------------------------------------------------------------
    # connections: open and close
    # ------------------------------------------------------------------------------------
    def _add_connection(self, fd: int) -> None:
        """Take ownership of an accepted fd: register it and run the connect callbacks."""
        if self._stopping:
            lib.pg_close(fd)
            self.server._released()
            return
        conn = Connection(self, fd, self.now)
        if self._tls_context is not None:
            conn._tls = TlsSession(self._tls_context)
        self._conns[fd] = conn
        if fd < self._nflags:
            self._flags[fd] = 0
        try:
            self._poller.add(fd, KIND_CONN)
        except OSError as exc:
            self._conns.pop(fd, None)
            lib.pg_close(fd)
            self.server._released()
            log.warning("cannot register connection fd %d: %s", fd, exc)
            return
        self.server._configure_socket(fd)
        try:
            self._protocol.connection_made(conn)
            self._handler.on_connect(conn)
        except Exception as exc:
            self._fail(conn, exc)

    def _fail(self, conn: Connection, exc: BaseException) -> None:
        """User code raised: log it with its traceback and close only this connection."""
        log.error("handler error on %r, closing it", conn, exc_info=exc)
        self._close(conn, exc, "error")

    def _bad_input(self, conn: Connection, reason: str, exc: BaseException | None = None) -> None:
        log.warning("closing %r: bad input: %s", conn, reason)
        self._close(conn, exc if exc is not None else ProtocolError(reason), "bad_input")

    def _close(self, conn: Connection, error: BaseException | None, reason: str) -> None:
        """Graceful close: stop reading, flush queued output, then finish."""
        if conn._state != OPEN:
            return
        conn._state = CLOSING
        conn._error = error
        conn._reason = reason
        if conn._out is not None and len(conn._out):
            self._poller.modify(conn._fd, KIND_CONN, False, True)
            self._lingering.add(conn)
        elif conn._parts is None:
            self._dirty.append(conn)      # finish at the end of the turn, after other output
        # else: the connection is already dirty; the flush finishes it

    def _abort(self, conn: Connection, error: BaseException | None, reason: str) -> None:
        """Close now, dropping unsent output (the peer is gone or broken)."""
        if conn._state == CLOSED:
            return
        if conn._state == OPEN:
            conn._error = error
            conn._reason = reason
        conn._state = CLOSING
        self._finish(conn)

    def _abort_errno(self, conn: Connection, err: int) -> None:
        """A socket call failed with `err`: close now with the OSError (a reset, or another error)."""
        self._abort(conn, OSError(err, os.strerror(err)), "reset" if err in _RESET else "error")

    def _finish(self, conn: Connection) -> None:
        if conn._state == CLOSED:
            return
        conn._state = CLOSED
        fd = conn._fd
        self._conns.pop(fd, None)
        self._lingering.discard(conn)
        if 0 <= fd < self._nflags:
            self._flags[fd] = 0
        conn._out = None
        conn._in = None
        conn._parts = None
        reason = conn._reason
        self.closed_by_reason[reason] = self.closed_by_reason.get(reason, 0) + 1
        self.server._released()
        error = conn._error
        # Addresses outlive the socket (like asyncio's cached peername): looked up now unless a
        # callback already asked.  Callbacks run while the fd is open; nothing can be sent.
        if conn._peer is None:
            conn._peer = conn._sock_name(True)
        if conn._local is None:
            conn._local = conn._sock_name(False)
        try:
            self._protocol.connection_lost(conn, error)
        except Exception:
            log.exception("%s.connection_lost raised", type(self._protocol).__name__)
        try:
            self._handler.on_close(conn, error)
        except Exception:
            log.exception("%s.on_close raised", type(self._handler).__name__)
        conn._fd = -1          # before the number can be reused by another accept
        lib.pg_close(fd)

    # ------------------------------------------------------------------------------------
    # inbox, timers, housekeeping, stop
    # ------------------------------------------------------------------------------------
    def _drain_inbox(self) -> None:
        self._wake_pending = False
        inbox = self._inbox
        while inbox:
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("error in a call posted to loop %d", self.index)

    def _run_timers(self) -> None:
        now = monotonic()
        self._deadline = None
        for timer in self._timers.pop_due(now):
            started = monotonic()
            try:
                timer.fn(*timer.args)
            except Exception:
                log.exception("timer callback %r raised", timer.fn)
            finally:
                spent = monotonic() - started
                if self._slow and spent > self._slow:
                    log.warning("slow callback: timer %s took %.3f s, blocking loop %d",
                                getattr(timer.fn, "__qualname__", timer.fn), spent, self.index)
            if timer.interval and not timer.cancelled:
                timer.when = max(timer.when + timer.interval, now)
                self._timers.push(timer)
        self._deadline = self._timers.next_deadline()

    def _sweep(self) -> None:
        """Periodic: idle timeouts, lingering closes, and dropping rings of quiet connections."""
        now = self.now
        idle = self._idle
        for conn in list(self._conns.values()):
            if conn._state == OPEN:
                if idle is not None and now - conn._last >= idle:
                    self._close(conn, TimeoutError(f"idle for {idle} s"), "idle")
                elif conn._in is not None and not len(conn._in) and now - conn._last >= 1.0:
                    conn._in = None
        for conn in list(self._lingering):
            if now - conn._last >= LINGER:
                self._abort(conn, conn._error, conn._reason)

    def _start_housekeeping(self) -> None:
        period = 1.0 if self._idle is None else max(0.05, min(0.5, self._idle / 2))
        self.run_every(period, self._sweep)

    def _begin_stop(self, timeout: float | None) -> None:
        """Stop: no new reads; flush for at most `timeout` seconds, then close what is left."""
        if self._stopping:
            return
        self._stopping = True
        if self.index == 0:
            self.server._close_listeners()
        self._stop_deadline = None if timeout is None else monotonic() + timeout
        for conn in list(self._conns.values()):
            self._close(conn, None, "stop")

    def _stop_step(self) -> bool:
        """True when this loop may exit: everything flushed, or the deadline has passed."""
        if self._dirty or self._inbox:
            return False
        if self._stop_deadline is not None and monotonic() >= self._stop_deadline:
            for conn in list(self._conns.values()):
                self._abort(conn, conn._error, conn._reason or "stop")
        if self._conns:
            return False
        return True


__all__ = ["EventLoop"]
