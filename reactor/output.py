"""Output: what a loop turn queued for its connections, and the one flush at the end of it.

The only code that knows output part kinds, the echo merge and computed replies.  Rules:

- A reply that needs the codec's framing is appended to `conn._q` (one list append on the hot
  path; the list lives for the turn, sealing empties it in place).  Everything else - arena
  ranges (echoes), raw bytes, TLS records - is a part `(kind, a, b)` in `conn._parts`.  Before
  a part is added the pending `_q` is *sealed*: framed into one bytes object (a delimiter join,
  or length headers written by one C call), passed through TLS, and added as a part.  So parts
  stand in the order they were handed over.
- Sealed output up to PIN_MIN bytes is appended to the turn's blob (one bytearray, handed to C
  once per flush); larger output is pinned: `bytes` as they are (immutable), anything else
  copied first, so a caller may reuse its buffer as soon as send() returns.
- Arena ranges stay valid until flush() returns: the next poll, which reads into the arena
  again, comes after it, and an arena that views still reach is retired, never reused.
- Echo merge: with `echo_identical` protocols, a reply that is the very payload view is the
  bytes that arrived, framing included, so it is sent as the arena range [a - pre, a + b +
  post); the frames of one read lie back to back, so consecutive echoes merge into one range.
- flush() writes every dirty connection with one sendmsg each (one native call for all).  What
  the kernel does not take is copied into the connection's output ring and write interest is
  armed.  FINs and closes are carried out only after pg_flush has returned: nothing is ever
  written to a closed (and possibly reused) fd number.
- Once a file region is queued (conn.sendfile), the ring is a filesend.SendQueue: the same
  calls (`write`, `_write_to`, `len`), with the file's bytes in order behind what came before
  it; backpressure counts what is held in memory (`_held`), not the file.
"""
from __future__ import annotations

from inspect import iscoroutine
from typing import TYPE_CHECKING, Any, Callable

from ringbuf import RingBuffer

from ._native import O_ARENA, O_BLOB, O_FRAME, O_PTR, ffi, lib
from .callbacks import output_hook
from .connection import CLOSED
from .deferred import Deferrals, is_deferred
from .protocol import NativePlan

if TYPE_CHECKING:
    from .connection import Connection
    from .loop import EventLoop

PIN_MIN = 64 << 10          # sealed output larger than this is pinned, not copied into the blob
_RING_MIN = 65536


def _framer(plan: NativePlan | None) -> Callable[[list], Any]:
    """How a turn's replies of one connection become bytes: chosen once per loop."""
    if plan is None or plan.reply in ("none", "packet"):
        return b"".join
    if plan.reply == "suffix":
        suffix = plan.suffix

        def frame_suffix(q: list) -> bytes:
            q.append(b"")
            return suffix.join(q)
        return frame_suffix
    width, little = plan.header_width, int(plan.header_order == "little")
    frame = lib.pg_frame_headers

    order = plan.header_order

    def frame_header(q: list) -> Any:
        n = len(q)
        if n == 1:              # one reply (no pipelining): a concatenation beats the C call
            r = q[0]
            return len(r).to_bytes(width, order) + r
        if n <= 8:
            return b"".join([x for r in q for x in (len(r).to_bytes(width, order), r)])
        src = b"".join(q)       # many: the headers are written by one C call
        dst = bytearray(len(src) + width * n)
        frame(src, list(map(len, q)), n, width, little, ffi.from_buffer(dst))
        return dst
    return frame_header


def _held(out: Any) -> int:
    """Bytes of unsent output held in memory (backpressure): a queued file's are not."""
    return len(out) if type(out) is RingBuffer else out.memory


def bytes_like(data: Any, source: str) -> Any:
    """`data` as an immutable or private bytes-like object, or TypeError naming `source`."""
    t = type(data)
    if t is bytes:
        return data
    if t is str:
        raise TypeError(f"{source} gave str; encode it, or use a protocol that takes text")
    try:
        view = memoryview(data)
    except TypeError:
        if iscoroutine(data):
            data.close()            # never awaited: closed here, no warning later
            raise TypeError(f"{source} gave a coroutine: declare the handler method with "
                            "`async def` and pygev runs it on its asyncio loop") from None
        raise TypeError(f"{source} gave {t.__name__}, not a bytes-like object "
                        "(bytes, bytearray, memoryview)") from None
    return view.tobytes()


class Output:
    """The output side of one event loop (loop thread only)."""

    def __init__(self, loop: EventLoop, plan: NativePlan | None, packet: Callable[..., Any] | None,
                 high: int, low: int, deferrals: Deferrals) -> None:
        self._loop = loop
        self._deferrals = deferrals
        self._dirty: list[Connection] = []
        self.dirty_append = self._dirty.append
        self._frame = _framer(plan)
        self._plain = plan is None or plan.reply in ("none", "packet")   # one reply: sent as it is
        self._packet = packet
        self._high = high
        self._low = low
        self._blob = bytearray()
        self._keep: list[Any] = []
        self._ptrs = ffi.new("char *[]", 256)
        self._short = ffi.new("int64_t[]", 3 * 256)
        self._hdr_width = plan.header_width if plan is not None and plan.reply == "header" else 0
        self._hdr_order = plan.header_order if plan is not None else "big"
        self._suffix = plan.suffix if plan is not None and plan.reply == "suffix" else b""
        self.sent_bytes = 0
        self.backpressure_pauses = 0

    def bind(self, L: Any, flush: Any = lib.pg_flush) -> None:
        """Attach the native loop struct and the backend's flush (at open)."""
        self._L = L
        self._flush = flush
        L.ptrs = self._ptrs
        L.shortw = self._short
        L.hdr_width = self._hdr_width
        L.hdr_little = int(self._hdr_order == "little")
        self._suffix_buf = ffi.new("char[]", self._suffix or b"\0")
        L.suffix, L.suffix_len = self._suffix_buf, len(self._suffix)

    # ------------------------------------------------------------------------------------
    # queueing (loop thread)
    # ------------------------------------------------------------------------------------
    def mark(self, conn: Connection) -> None:
        """Put `conn` on the list of connections the next flush visits."""
        if not conn._dirty:
            conn._dirty = True
            self.dirty_append(conn)

    def queue(self, conn: Connection) -> Any:
        """Where this turn's replies of `conn` are appended (a list, or its deferred chain)."""
        q = conn._q
        if q is None:
            q = conn._q = []
            self.mark(conn)
        return q

    def reply(self, conn: Connection, data: Any, source: str) -> None:
        """A reply that goes through the protocol: packet() when it has one, else the native
        framing at seal time.  Not bytes-like: TypeError naming `source`.  A Future, or any
        reply of a connection with one pending, is held in order (deferred.py)."""
        if conn._held is not None or (type(data) is not bytes and is_deferred(data)):
            self._deferrals.hold(conn, data)
            return
        if self._packet is not None:
            data = self._packet(conn, data)
            if data is None:
                return
        data = bytes_like(data, source) if type(data) is not bytes else data
        q = conn._q
        if q is None:
            conn._q = [data]
            self.mark(conn)
        else:
            q.append(data)

    def raw(self, conn: Connection, data: Any, source: str = "send_raw()") -> None:
        """Bytes as they are (no framing), in order with the replies; through TLS if any."""
        data = bytes_like(data, source)
        if conn._held is not None:
            conn._held.add_raw(data)
            return
        if conn._q:
            self._seal(conn)
        tls = conn._tls
        if tls is not None:
            data = tls.encrypt(data)
        self._add(conn, data)

    def wire(self, conn: Connection, data: bytes) -> None:
        """Bytes for the socket exactly as they are (TLS records), in order."""
        if conn._q:
            self._seal(conn)
        self._add(conn, data)

    def seal_pending(self, conn: Connection) -> None:
        """Frame (and encrypt) this turn's replies now: what comes next must follow them."""
        if conn._q:
            self._seal(conn)

    def echo(self, conn: Connection, kind: int, a: int, b: int, message: Any) -> None:
        """Queue the arena range [a, a + b) (kind O_ARENA, or O_FRAME for C framing) that
        echoes `message`; ranges that continue the previous one merge into it."""
        if conn._held is not None:
            conn._held.add_reply(message)         # copied: the arena lives one turn
            return
        if conn._q:
            self._seal(conn)
        parts = conn._parts
        if parts is None:
            conn._parts = [kind, a, b]
            self.mark(conn)
        elif kind == O_ARENA and parts[-3] == O_ARENA and parts[-2] + parts[-1] == a:
            parts[-1] += b
        else:
            parts += (kind, a, b)

    def _seal(self, conn: Connection) -> None:
        """Frame the pending replies into one part.  The list object stays (emptied): a reader
        looping over a run of messages keeps appending to it, in order after the part."""
        if conn._held is not None:
            return                  # conn._q is the deferred chain: nothing to frame yet
        q = conn._q
        assert q
        data = q[0] if self._plain and len(q) == 1 else self._frame(q)
        q.clear()
        tls = conn._tls
        if tls is not None:
            data = tls.encrypt(data)
        self._add(conn, data)

    def _add(self, conn: Connection, data: Any) -> None:
        n = len(data)
        if not n:
            return
        if n <= PIN_MIN:
            blob = self._blob
            kind, a = O_BLOB, len(blob)
            blob += data
        else:
            kind, a = O_PTR, len(self._keep)
            self._keep.append(data)
        parts = conn._parts
        if parts is None:
            conn._parts = [kind, a, n]
            self.mark(conn)
        else:
            parts += (kind, a, n)

    @property
    def pending_flush(self) -> bool:
        """Some connection has output (or a FIN or close) waiting for the flush."""
        return bool(self._dirty)

    # ------------------------------------------------------------------------------------
    # sizes
    # ------------------------------------------------------------------------------------
    def pending(self, conn: Connection) -> int:
        """Bytes queued for `conn` in this turn and in its output ring."""
        n = len(conn._out) if conn._out is not None else 0     # file bytes too (filesend.py)
        if conn._held is not None:
            n += conn._held.pending_bytes
        elif conn._q:
            extra = self._hdr_width + len(self._suffix)
            n += sum(len(x) + extra for x in conn._q)
        parts = conn._parts
        if parts:
            extra = self._hdr_width + len(self._suffix)
            for i in range(0, len(parts), 3):
                n += parts[i + 2] + (extra if parts[i] == O_FRAME else 0)
        return n

    # ------------------------------------------------------------------------------------
    # the flush
    # ------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write every dirty connection's output: one native call, one sendmsg each.  Python
        only hears about the connections the kernel did not take everything from."""
        dirty = self._dirty[:]
        self._dirty.clear()           # in place: readers hold its bound append
        loop = self._loop
        now = loop.now
        spec: list[int] = []
        groups: list[Connection] = []
        finishing: list[Connection] = []
        blob = self._blob
        frame = self._frame
        plain = self._plain
        for conn in dirty:
            conn._dirty = False
            if conn._state == CLOSED:
                conn._q = conn._parts = None
                continue
            q = conn._q
            if q and conn._parts is None and conn._out is None and conn._tls is None \
                    and conn._bye is None and conn._held is None:
                # the common case, inline: this turn's replies and nothing else
                data = q[0] if plain and len(q) == 1 else frame(q)
                n = len(data)
                if n <= PIN_MIN:
                    conn._q = None
                    conn._last = now
                    spec += (conn._fd, 1, O_BLOB, len(blob), n)
                    blob += data
                    groups.append(conn)
                    if conn._state or conn._shut == 1:
                        finishing.append(conn)
                    continue
                self._add(conn, data)             # large: pinned, then the general path
                q.clear()
            if conn._bye is not None and conn._held is None:   # after deferred replies
                loop.closer.goodbye(conn)
            if conn._held is None:
                if conn._q:
                    self._seal(conn)
                conn._q = None
            parts = conn._parts
            conn._parts = None
            if parts is not None:
                conn._last = now          # output counts as activity
                if conn._out is not None:             # keep order behind output already waiting
                    self._spill(conn, parts, 0)
                    self.write_ring(conn)
                    continue
                spec += (conn._fd, len(parts) // 3)
                spec += parts
                groups.append(conn)
            if conn._state or conn._shut == 1:
                finishing.append(conn)            # FIN or close once this is written
        if groups:
            self._write(groups, spec)
        self._blob = bytearray()
        self._keep.clear()
        for conn in finishing:
            if conn._out is None and conn._state != CLOSED:
                loop.closer.after_write(conn)

    def _write(self, groups: list[Connection], spec: list[int]) -> None:
        L = self._L
        keep = self._keep
        if len(keep) > len(self._ptrs):
            self._ptrs = L.ptrs = ffi.new("char *[]", 2 * len(keep))
        pinned = [ffi.from_buffer(d) for d in keep]
        for i, p in enumerate(pinned):
            self._ptrs[i] = p
        blob = ffi.from_buffer(self._blob) if self._blob else ffi.NULL
        L.blob = blob
        if 3 * len(groups) > len(self._short):
            self._short = L.shortw = ffi.new("int64_t[]", 3 * len(groups))
        self.sent_bytes += self._flush(L, spec, len(spec))
        nshort = L.nshort
        if nshort:
            self._short_writes(groups, spec, ffi.unpack(self._short, 3 * nshort))
        L.blob = ffi.NULL
        del blob, pinned

    def _part_view(self, kind: int, a: int, b: int) -> Any:
        """The bytes behind one queued output part (for the slow paths)."""
        if kind == O_ARENA:
            return self._loop.arena_view(a, b)
        if kind == O_BLOB:
            return memoryview(self._blob)[a:a + b]
        if kind == O_PTR:
            return self._keep[a]
        width = self._hdr_width
        head = b.to_bytes(width, self._hdr_order) if width else b""
        return b"".join((head, self._loop.arena_view(a, b), self._suffix))

    def spill(self, conn: Connection, parts: list) -> None:
        """Copy queued parts into the connection's output ring (a file region follows them)."""
        self._spill(conn, parts, 0)

    def _spill(self, conn: Connection, parts: list, skip: int) -> None:
        """Copy what the kernel did not take (all but the first `skip` bytes) into the output ring."""
        ring = conn._out
        if ring is None:
            ring = conn._out = RingBuffer(_RING_MIN)
        for i in range(0, len(parts), 3):
            view = self._part_view(parts[i], parts[i + 1], parts[i + 2])
            n = len(view)
            if skip >= n:
                skip -= n
                continue
            ring.write(view[skip:] if skip else view)
            skip = 0

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
                self._loop.closer.abort_errno(conn, -written)
                continue
            start = starts[index]
            self._spill(conn, spec[start:start + 3 * spec[start - 1]], written)
            self._want_write(conn)

    def _want_write(self, conn: Connection) -> None:
        """Output is waiting in the ring: arm write interest; past the high-water mark, stop reading."""
        if not conn._paused & 1 and _held(conn._out) > self._high:
            conn._paused |= 1
            self.backpressure_pauses += 1
            output_hook(self._loop, conn, "on_high_water")
        self._loop.update_interest(conn)

    def write_ring(self, conn: Connection) -> None:
        """The socket is writable (or output is queued behind the ring): write what waits."""
        ring = conn._out
        if ring is None or conn._state == CLOSED:
            return
        loop = self._loop
        res = ring._write_to(conn._fd)
        if res > 0:
            self.sent_bytes += res
            conn._last = loop.now
        elif res < 0 and not loop.would_block(-res):
            loop.closer.abort_errno(conn, -res)
            return
        if len(ring):
            if conn._paused & 1 and _held(ring) <= self._low:
                conn._paused &= ~1
                output_hook(loop, conn, "on_drain")
            self._want_write(conn)
        else:
            conn._out = None
            if conn._paused & 1:
                conn._paused &= ~1
                output_hook(loop, conn, "on_drain")
            loop.update_interest(conn)
            loop.closer.after_write(conn)


__all__ = ["Output", "bytes_like"]
