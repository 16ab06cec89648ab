"""Reading: from the rows of one poll to `on_message` calls.  One reader per loop, chosen once
from the protocol's native plan (raw reads, C-split frames, or the protocol's own unpacket).

Where the bytes are:
- `pg_poll` reads every ready socket into the loop's arena (one block, refilled from offset 0
  every turn) and returns rows (see _reactor.h).  A row's (offset, length) is valid until the
  turn ends.
- Bytes that outlive the turn - the unfinished tail of a read - are copied once into the
  connection's input ring (`_stash`), and that fd is flagged PG_F_PYREAD: its next reads go
  straight into the ring (no second copy), where frames are split in place.  When the ring is
  empty again the flag is cleared and reads return to the arena.
- A frame begun must be finished within `frame_timeout` (the connection's `_deadline`), so a
  peer trickling one byte at a time cannot hold a ring forever.

What a handler gets (the message type):
- Messages shorter than `view_threshold` bytes are `bytes` (one small copy, ~60 ns; ordinary
  handler code - a prefix compare, a slice, a dict key - is 2-3x cheaper on bytes than on a
  memoryview).  Longer ones are read-only memoryviews over the arena or the ring: zero copy,
  cut so that a kept one never shows other bytes later (see arena.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ringbuf import RingBuffer, ViewBuffer

from ._native import (F_PYREAD, FRAME_TOO_LONG, O_ARENA, O_FRAME, R_DATA, R_EOF, R_ERROR, R_FRAME,
                      R_FRAME_ERROR, R_LINES, R_PARTIAL, R_READABLE, R_WRITABLE, ffi, lib)
from .arena import RingRun
from .connection import OPEN
from .deferred import GATE
from .filesend import resume_after_handshake
from .protocol import NativePlan
from .unpacking import relocate, unpack, unpack_ring

if TYPE_CHECKING:
    from .connection import Connection
    from .loop import EventLoop

MAX_ROWS = 16384
TURN_COPY_MAX = 256 << 10   # a turn that read more than this makes each small message on its own


class Reader:
    """Turns rows into protocol and handler calls for one loop (loop thread only)."""

    def __init__(self, loop: EventLoop, plan: NativePlan | None, view_threshold: int | None,
                 read_max: int, max_pending: int) -> None:
        self._loop = loop
        handler = loop.handler
        self._on_message = handler.on_message
        self._source = f"{type(handler).__qualname__}.on_message"
        self._protocol = loop.protocol
        self._unpacket = self._protocol.unpacket
        self._view_min = (1 << 62) if view_threshold is None else view_threshold
        self._read_max = read_max
        self._max_pending = max_pending
        self._split = plan is not None and plan.split is not None
        self._native_reply = plan is not None and plan.reply != "packet"   # C/Python framing, no packet()
        # How a reply that is the very message handed to on_message is queued without a copy:
        # an arena range (O_ARENA, merged with its neighbours) or framed by C (O_FRAME); None
        # when the protocol's packet() must run.  See output.py on the echo merge.
        self._echo_kind: int | None = None
        self._pre = self._post = 0
        if plan is not None and plan.reply != "packet" and not loop.tls:
            if plan.echo_identical:
                self._echo_kind = O_ARENA
                if plan.reply == "header":
                    self._pre = plan.header_width
                elif plan.reply == "suffix":
                    self._post = len(plan.suffix)
            else:
                self._echo_kind = O_FRAME
        self._message_row = R_FRAME if plan is not None and plan.split is not None else R_DATA
        if plan is None or loop.tls:
            self.dispatch = self._dispatch_generic
        else:
            self.dispatch = self._dispatch_messages
        self._nsplit = ffi.new("int *")
        split = plan.split if plan is not None and plan.split is not None else {}
        self._delim = bytes(split.get("delim", b"\n"))
        self._strip_cr = bool(split.get("strip_cr", 0))
        # PG_R_LINES runs: delimiter codecs whose replies need no packet(), echo or not
        self.lines = (bool(split.get("delim")) and self._native_reply
                      and self.dispatch == self._dispatch_messages)

    # ------------------------------------------------------------------------------------
    # the three readers
    # ------------------------------------------------------------------------------------
    def _dispatch_messages(self, rows: list[int]) -> None:
        """Raw reads (DefaultProtocol: one read, one message) and built-in codecs (frames
        split in C): each message goes to on_message.  Replies are framed natively (no packet()
        call); a reply that is the message itself goes out as its arena range."""
        loop = self._loop
        conns = loop.conns
        arena = loop.arena
        amv = arena.mv
        thr = self._view_min
        now = loop.now
        on_message = self._on_message
        out = loop.out
        dirty_append = out.dirty_append
        echo_kind = self._echo_kind
        pre = self._pre
        extra = pre + self._post
        merge = echo_kind == O_ARENA
        native_reply = self._native_reply
        message = self._message_row
        turn: Any = None          # this turn's arena bytes as one bytes object, made lazily
        tv = None
        last_fd = -1
        conn: Any = None
        it = iter(rows)
        for fd, a, b, code in zip(it, it, it, it):
            if fd != last_fd:          # frames of one read come in a run: look the fd up once
                last_fd = fd
                conn = conns.get(fd)
                if conn is not None:
                    conn._last = now
            if code != message or conn is None:
                if code == R_LINES and conn is not None:
                    self._lines(conn, a, b)
                else:
                    self.event(fd, a, b, code, conn)
                continue
            if conn._state:
                continue
            msg: Any
            if b < thr:
                if turn is None:  # one copy of what the poll read, then a bytes slice per message
                    used = loop.arena_used()
                    turn = amv[:used].tobytes() if used <= TURN_COPY_MAX else False
                msg = turn[a:a + b] if turn else amv[a:a + b].tobytes()
            else:
                if tv is None:
                    tv = arena.turn_view()
                msg = tv[a:a + b]
            try:
                res = on_message(conn, None, msg)
                if res is None:
                    continue
                if res is msg and echo_kind is not None:
                    if not conn._q:
                        parts = conn._parts
                        a -= pre
                        b += extra
                        if parts is None:
                            conn._parts = [echo_kind, a, b]
                            if not conn._dirty:
                                conn._dirty = True
                                dirty_append(conn)
                        elif merge and parts[-2] + parts[-1] == a and parts[-3] == O_ARENA:
                            parts[-1] += b
                        else:
                            parts += (echo_kind, a, b)
                    else:
                        out.echo(conn, echo_kind, a - pre, b + extra, msg)
                elif type(res) is bytes and native_reply:
                    q = conn._q
                    if q is None:
                        conn._q = [res]
                        if not conn._dirty:
                            conn._dirty = True
                            dirty_append(conn)
                    else:
                        q.append(res)
                else:
                    out.reply(conn, res, self._source)
                    if conn._paused & GATE:   # too many replies pending: the rest of its
                        conn = None           # rows wait (see event(): _held_row)
            except Exception as exc:
                loop.closer.fail(conn, exc)

    def _lines(self, conn: Connection, a: int, b: int) -> None:
        """A run of small delimited frames (PG_R_LINES): split by CPython's bytes.split, which
        beats a row per frame; each line goes to on_message as bytes."""
        if conn._state:
            return
        lines = self._split_lines(self._loop.arena.mv[a:a + b].tobytes())
        out = self._loop.out
        append = out.queue(conn).append     # the list lives for the turn (see output.py)
        on_message = self._on_message
        native_reply = self._native_reply
        it = iter(lines)
        for msg in it:
            try:
                res = on_message(conn, None, msg)
                if type(res) is bytes and native_reply:
                    append(res)
                elif res is not None:
                    out.reply(conn, res, self._source)
                    append = out.queue(conn).append    # a Future opens a chain (deferred.py)
                    if conn._paused & GATE:
                        for rest in it:
                            conn._held.wait(None, rest)
                        return
            except Exception as exc:
                self._loop.closer.fail(conn, exc)
                return
            if conn._state:
                return

    def _split_lines(self, chunk: bytes) -> list[bytes]:
        """A PG_R_LINES run as its lines (each ends with the delimiter; a trailing CR goes)."""
        lines = chunk.split(self._delim)
        lines.pop()                         # the run ends with a delimiter
        if self._strip_cr and b"\r" in chunk:
            lines = [x[:-1] if x[-1:] == b"\r" else x for x in lines]
        return lines

    def _dispatch_generic(self, rows: list[int]) -> None:
        """Protocols with their own unpacket (and TLS, which decrypts first)."""
        loop = self._loop
        conns = loop.conns
        now = loop.now
        tv = None
        it = iter(rows)
        for fd, a, b, code in zip(it, it, it, it):
            conn = conns.get(fd)
            if code != R_DATA or conn is None:
                self.event(fd, a, b, code, conn)
            elif not conn._state:
                conn._last = now
                if tv is None:
                    tv = loop.arena.turn_view()
                self._feed(conn, tv[a:a + b])

    # ------------------------------------------------------------------------------------
    # every row but a message
    # ------------------------------------------------------------------------------------
    def event(self, fd: int, a: int, b: int, code: int, conn: Connection | None) -> None:
        """Accepts, leftovers, writability, EOF, errors."""
        loop = self._loop
        if conn is None:
            conn = loop.conns.get(fd)
            if conn is None:
                loop.orphan_row(fd, a, b, code)
            elif code == self._message_row or code == R_LINES:
                self._held_row(conn, a, b, code)
            else:
                self.event(fd, a, b, code, conn)
        elif code == R_PARTIAL:
            if conn._state == OPEN:
                self._stash(conn, loop.arena.mv[a:a + b])
                self._split_ring(conn)
        elif code == R_WRITABLE:
            loop.out.write_ring(conn)
        elif code == R_READABLE:
            if conn._state == OPEN:
                conn._last = loop.now
                if conn._side is None:
                    self._read_into_ring(conn)
                else:
                    conn._side.read(conn)       # a dialed connection reads with its own handler
        elif code == R_EOF:
            loop.closer.peer_eof(conn)
        elif code == R_ERROR:
            loop.closer.abort_errno(conn, a)
        elif code == R_FRAME_ERROR:
            loop.closer.bad_input(conn, self._frame_error_text(a, b))

    def _held_row(self, conn: Connection, a: int, b: int, code: int) -> None:
        """Messages of a connection gated in this turn (deferred.py): they wait, as bytes."""
        if conn._state != OPEN:
            return
        chunk = self._loop.arena.mv[a:a + b].tobytes()
        for msg in self._split_lines(chunk) if code == R_LINES else (chunk,):
            if conn._paused & GATE:
                conn._held.wait(None, msg)
            else:
                self.deliver(conn, None, msg)

    def deliver(self, conn: Connection, ctx: Any, msg: Any) -> None:
        """One message to on_message, its reply through the protocol (the slow path)."""
        try:
            res = self._on_message(conn, ctx, msg)
            if res is not None:
                self._loop.out.reply(conn, res, self._source)
        except Exception as exc:
            self._loop.closer.fail(conn, exc)

    def resume(self, conn: Connection) -> None:
        """The gate opened: parse what waits in the input ring (deferred.py)."""
        if conn._side is not None:
            conn._side.resume(conn)           # a dialed connection parses its own input
            return
        ring = conn._in
        if ring is None or not len(ring) or conn._state != OPEN:
            return
        if self._split:
            self._split_ring(conn)
        else:
            self._unpack_ring(conn)

    def _frame_error_text(self, reason: int, length: int) -> str:
        plan = self._protocol.native_plan()
        limit = plan.split.get("max_frame") if plan is not None and plan.split else None
        if reason == FRAME_TOO_LONG:
            return f"frame of {length} bytes exceeds the maximum frame length {limit}"
        return f"bad frame length field (frame length {length})"

    # ------------------------------------------------------------------------------------
    # input beyond the fast path
    # ------------------------------------------------------------------------------------
    def _stash(self, conn: Connection, view: Any) -> None:
        """Keep bytes that outlive the turn in the connection's input ring (copied once)."""
        ring = conn._in
        if ring is None:
            ring = conn._in = RingBuffer(max(len(view), self._read_max))
        ring.write(view)
        loop = self._loop
        if conn._deadline is None:
            conn._deadline = loop.now + loop.frame_timeout
        if conn._tls is None:
            loop.set_flag(conn._fd, F_PYREAD)      # the next read goes straight into the ring

    def _ring_drained(self, conn: Connection) -> None:
        """Leftovers are consumed: reads go back to the shared arena (the empty ring is kept
        for reuse until the connection goes quiet)."""
        conn._deadline = None
        self._loop.set_flag(conn._fd, 0)

    def _read_into_ring(self, conn: Connection) -> None:
        ring = conn._in
        loop = self._loop
        if ring is None:
            self._ring_drained(conn)
            return
        res = ring._read_from(conn._fd, self._read_max)
        if res > 0:
            loop.rx += res
            if self._split:
                self._split_ring(conn)
            else:
                self._unpack_ring(conn)
        elif res == 0:
            loop.closer.peer_eof(conn)
        elif not loop.would_block(-res):
            loop.closer.abort_errno(conn, -res)

    def _split_ring(self, conn: Connection) -> None:
        """Split the built-in codec's frames out of the input ring with the native splitter."""
        loop = self._loop
        ring = conn._in
        on_message = self._on_message
        rows_mv = loop.rows_mv
        thr = self._view_min
        out = loop.out
        while conn._state == OPEN and not conn._paused & GATE:
            size = len(ring)
            if size == 0:
                break
            run = RingRun(ring)
            view = run.mv
            consumed = lib.pg_split(loop.codec, ffi.from_buffer(view), size, conn._fd,
                                    loop.rows, MAX_ROWS, self._nsplit)
            k = self._nsplit[0]
            it = iter(rows_mv[:4 * k].tolist())
            stop = False
            msg: Any = None
            for _fd, a, b, code in zip(it, it, it, it):
                if code == R_FRAME_ERROR:
                    loop.closer.bad_input(conn, self._frame_error_text(a, b))
                    stop = True
                    break
                if conn._state != OPEN:
                    stop = True
                    break
                msg = view[a:a + b].tobytes() if b < thr else view[a:a + b]
                try:
                    res = on_message(conn, None, msg)
                    if res is not None:
                        out.reply(conn, res, self._source)
                except Exception as exc:
                    loop.closer.fail(conn, exc)
                    stop = True
                    break
                if conn._paused & GATE:       # the rest of the split waits (deferred.py)
                    stop = True
                    self._wait_rows(conn, view, it)
                    break
            del msg, view
            kept = run.escaped()
            if consumed > 0 and conn._in is ring:
                ring.retrieve(consumed)
            if kept:
                self._relocate(conn)
                ring = conn._in
            if stop or consumed <= 0 or k < MAX_ROWS or ring is None:
                break
        if conn._state == OPEN and ring is not None and not len(ring):
            self._ring_drained(conn)

    def _wait_rows(self, conn: Connection, view: Any, it: Any) -> None:
        chain = conn._held
        for _fd, a, b, code in zip(it, it, it, it):
            if code == R_FRAME_ERROR:
                self._loop.closer.bad_input(conn, self._frame_error_text(a, b))
                return
            chain.wait(None, view[a:a + b].tobytes())

    def _relocate(self, conn: Connection) -> None:
        """A view of the ring outlived its call: leave the ring to it, go on in a fresh one."""
        relocate(conn, self._read_max)

    def _feed(self, conn: Connection, view: Any) -> None:
        """Generic protocols: run unpacket over the new bytes (plus any leftovers)."""
        tls = conn._tls
        loop = self._loop
        if tls is not None:
            try:
                plain = tls.feed(view)
            except Exception as exc:        # ssl.SSLError, or a TLS engine failure
                loop.out.wire(conn, tls.take_output())     # the alert, if any
                loop.closer.bad_input(conn, f"TLS error: {exc}", exc)
                return
            out = tls.take_output()
            if out:
                loop.out.wire(conn, out)
            if tls.ready and conn._deadline is not None and conn._in is None:
                conn._deadline = None              # the handshake is done
            if tls.ready and getattr(conn._out, "stalled", False):
                resume_after_handshake(loop, conn)  # a queued file waited for the handshake
            if plain:
                self._feed_plain(conn, memoryview(plain))
            if tls.closed_by_peer and conn._state == OPEN:
                loop.closer.peer_eof(conn)                # replies first, then our close_notify
            return
        self._feed_plain(conn, view)

    def _feed_plain(self, conn: Connection, view: Any) -> None:
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
            self._unpack_ring(conn)

    def _unpack_ring(self, conn: Connection) -> None:
        if unpack_ring(conn, self._unpack, self._read_max) and conn._state == OPEN:
            if not len(conn._in):
                self._ring_drained(conn)
            else:
                self._check_pending(conn)

    def _unpack(self, conn: Connection, buf: Any) -> None:
        unpack(conn, buf, self._protocol, self._unpacket, self._on_message, self._loop.out.reply,
               self._source, 0)

    def _check_pending(self, conn: Connection) -> None:
        if conn._in is not None and len(conn._in) > self._max_pending and conn._state == OPEN:
            self._loop.closer.bad_input(conn, f"{len(conn._in)} unparsed bytes exceed the protocol's "
                                       f"max_pending ({self._max_pending})")


__all__ = ["MAX_ROWS", "Reader"]
