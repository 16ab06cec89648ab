"""Replies that take time: a Future returned by on_message, kept in order with everything else.

Rules (carried out here, and at the seams named):
- A reply that is a `concurrent.futures.Future` or an `asyncio.Future` opens the connection's
  chain (`conn._held`): the connection's output from then on, in the order it was handed over -
  a Slot for each Future, an Output for every reply, `send()`, `send_raw()` or echo after the
  first Slot.  Output queued before the chain opened is sealed into the turn's parts first
  (output.py `seal_pending`), so it leaves before anything the chain holds.
- While a chain is open, `conn._q` is the chain itself.  The reader's fast paths append a
  computed reply to whatever `conn._q` is, so a held connection's replies land in the chain
  with no check per message; output.py sends `reply()`, `raw()` and `echo()` of a held
  connection here (`conn._held is not None`).  Echoed views are copied: they live one turn.
- A Future's done callback (any thread) posts the outcome to the loop; `_release` then writes
  the chain's head in order through the ordinary output path (packet(), framing, TLS), up to the
  next unfinished Slot.  An empty chain is closed and `conn._q` is ordinary again.
- An exception from a Future closes the connection as one raised by on_message does.
- max_pending_replies: with that many unfinished Slots the chain is *gated*: the socket is not
  read (`conn._paused` bit 4) and messages already read wait - in `waiting` (rows of the turn)
  or in the input ring - to be handed to on_message, in order, as Slots finish.  So memory is
  bounded by what had been read when the gate closed.  An `async def on_connect` is a barrier
  Slot: no message is handed over before it finished.
- A chain is cancelled when its connection finishes: each Future is cancelled (a coroutine's
  task with it) and a result that arrives later is dropped.  A peer FIN with replies pending
  waits for them (a half-closed peer still reads), then closes.
"""
from __future__ import annotations

import logging
import threading
from asyncio import isfuture
from functools import partial
from inspect import iscoroutine
from contextvars import ContextVar
from collections import deque
from concurrent.futures import CancelledError
from concurrent.futures import Future as ConcurrentFuture
from typing import TYPE_CHECKING, Any

from .connection import CLOSED, OPEN

if TYPE_CHECKING:
    from .connection import Connection
    from .loop import EventLoop

log = logging.getLogger("reactor.deferred")

GATE = 4                    # conn._paused bit: too many replies pending, the socket is not read
_REPLY, _RAW = 0, 1
_SOURCE = "a deferred reply"


class Promise:
    """A reply that another thread fills in, lighter than a Future (no lock, no condition):
    coroutines.py makes one per `async def` call.  Its outcome comes back in batches through
    `Deferrals.settle_promises` on the loop that made it; `cancel()` may come from that loop."""

    __slots__ = ("loop", "target", "cancelled", "on_cancel")

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.target: Any = None             # (chain, slot) once a chain waits on it
        self.cancelled = False
        self.on_cancel: Any = None          # set by whoever runs it

    def cancel(self) -> None:
        self.cancelled = True
        on_cancel = self.on_cancel
        if on_cancel is not None:
            on_cancel()


_CALLING: ContextVar[Promise | None] = ContextVar("reactor_calling_promise", default=None)


def calling_promise() -> Promise | None:
    """The Promise of the coroutine running now (its send()s go before its reply), or None."""
    return _CALLING.get()


def enter_promise(promise: Promise) -> None:
    """Mark the current context as `promise`'s coroutine (coroutines.py, in the task's context)."""
    _CALLING.set(promise)


def is_deferred(data: Any) -> bool:
    """A reply that is not ready yet: a Promise, a concurrent.futures or asyncio Future (or Task)."""
    return type(data) is Promise or isinstance(data, ConcurrentFuture) or isfuture(data)


class Slot:
    """One Future's place in a chain."""

    __slots__ = ("future", "done", "result", "error", "barrier", "before")

    def __init__(self, future: Any, barrier: bool) -> None:
        self.future = future
        self.before: list[tuple[int, Any]] | None = None   # sends made by its coroutine
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.barrier = barrier


class Chain:
    """A connection's held output, its unfinished Futures and the messages waiting for them."""

    __slots__ = ("conn", "entries", "unfinished", "barriers", "gated", "waiting", "close_after",
                 "dead")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.entries: deque[Any] = deque()      # Slot | (kind, data), in hand-over order
        self.unfinished = 0
        self.barriers = 0
        self.gated = False
        self.waiting: deque[tuple[Any, Any]] = deque()   # (ctx, message) read, not handed over
        self.close_after = False
        self.dead = False

    def add_reply(self, data: Any) -> None:
        """A reply (through the protocol) behind what is held.  Views and bytearrays are copied:
        the caller may reuse them, and arena memory lives one turn."""
        if isinstance(data, (memoryview, bytearray)):
            data = bytes(data)
        self.entries.append((_REPLY, data))

    append = add_reply      # while held, conn._q is the chain: the reader's append lands here

    def add_raw(self, data: bytes) -> None:
        self.entries.append((_RAW, data))

    def wait(self, ctx: Any, message: Any) -> None:
        """A message read while gated: handed to on_message once the gate opens."""
        self.waiting.append((ctx, message))

    def close_when_done(self) -> None:
        """The peer half-closed: close once the pending replies are out (closing.py)."""
        self.close_after = True

    @property
    def pending_bytes(self) -> int:
        """Bytes held for sending (the part pending_write can count)."""
        n = 0
        for e in self.entries:
            if type(e) is tuple and isinstance(e[1], (bytes, str)):
                n += len(e[1])
        return n

    def cancel(self) -> None:
        """The connection finished: cancel what is pending, drop what is held (loop thread)."""
        self.dead = True
        for e in self.entries:
            if type(e) is Slot:
                if not e.done and e.future is not None:
                    _cancel(e.future)
                    e.future = None
            elif iscoroutine(e[1]):
                e[1].close()            # a wrong reply held behind a Future: never awaited
        self.entries.clear()
        self.waiting.clear()


def _cancel(future: Any) -> None:
    if type(future) is Promise or isinstance(future, ConcurrentFuture):
        future.cancel()
        return
    try:
        future.get_loop().call_soon_threadsafe(future.cancel)
    except RuntimeError:       # its loop is closed: nothing runs it any more
        pass


class Deferrals:
    """The deferred replies of one event loop (loop thread, except the done callbacks)."""

    def __init__(self, loop: EventLoop, max_pending: int) -> None:
        self._loop = loop
        self._max = max_pending
        self._lock = threading.Lock()
        self._arrived: list[tuple[Chain | None, Any, Any, BaseException | None]] = []
        self._posted = False

    # ------------------------------------------------------------------------------------
    # holding (output.py calls these for a Future, and for any output of a held connection)
    # ------------------------------------------------------------------------------------
    def hold(self, conn: Connection, data: Any) -> None:
        """A reply of `conn`: a Future takes a Slot, anything else waits behind the chain.  A
        concurrent Future that is already done is just its result (no slot, no hop)."""
        chain = conn._held
        if is_deferred(data):
            if type(data) is not Promise and isinstance(data, ConcurrentFuture) and data.done():
                result, error = _outcome(data)
                if error is not None:
                    raise error                   # closes the connection, as a raise would
                if chain is None:
                    if result is not None:
                        self._reply_now(conn, result)
                    return
                data = result
                if data is None:
                    return
                if not is_deferred(data):
                    chain.add_reply(data)
                    return
            if chain is None:
                chain = self._open(conn)
            self._slot(chain, data, barrier=False)
        elif chain is not None:
            chain.add_reply(data)

    def send_within(self, conn: Connection, promise: Promise, data: Any, packet: bool) -> None:
        """send() / send_raw() from inside a coroutine whose reply is pending: it goes out
        before that reply (at once when the coroutine's slot is the chain's head)."""
        target = promise.target
        chain = conn._held
        kind = _REPLY if packet else _RAW
        if target is None or target[0] is not chain:
            if chain is not None:        # its reply has gone already: in order from here
                (chain.add_reply if packet else chain.add_raw)(data)
            return
        slot = target[1]
        if chain.entries and chain.entries[0] is slot:
            self._emit(chain, kind, data)
        else:
            if slot.before is None:
                slot.before = []
            slot.before.append((kind, data))

    def _emit(self, chain: Chain, kind: int, data: Any) -> None:
        """Write `data` now, ahead of what the chain holds."""
        conn = chain.conn
        out = self._loop.out
        conn._held = None
        conn._q = None
        try:
            if kind == _REPLY:
                self._reply_now(conn, data)
            else:
                out.raw(conn, data)
            out.seal_pending(conn)
        finally:
            conn._held = chain
            conn._q = chain

    def when_done(self, future: Any, fn: Any) -> None:
        """Call fn(result, error) on this loop once `future` is done (no order kept: UDP)."""
        self._watch(future, None, fn)

    def barrier(self, conn: Connection, future: Any) -> None:
        """No message of `conn` is handed over before `future` finished (async on_connect)."""
        if not conn.ordered:                  # datagrams: nothing to hold back, errors logged
            self.when_done(future, partial(_log_error, conn))
            return
        chain = conn._held if conn._held is not None else self._open(conn)
        self._slot(chain, future, barrier=True)

    def _open(self, conn: Connection) -> Chain:
        self._loop.out.seal_pending(conn)     # what came before the Future goes first
        chain = conn._held = Chain(conn)
        conn._q = chain
        return chain

    def _slot(self, chain: Chain, future: Any, barrier: bool) -> None:
        slot = Slot(future, barrier)
        chain.entries.append(slot)
        chain.unfinished += 1
        if barrier:
            chain.barriers += 1
        if (chain.unfinished >= self._max or chain.barriers) and not chain.gated:
            self._gate(chain)
        self._watch(future, chain, slot)

    def _watch(self, future: Any, chain: Chain | None, target: Any) -> None:
        """Arrange for `future`'s outcome to reach this loop: it settles `target`, a Slot of
        `chain` (or, chain None, is passed to the function `target`).  Outcomes that arrive
        together are settled together (one inbox entry for all of them)."""
        if type(future) is Promise:
            future.target = (chain, target) if chain is not None else target
            return

        def done(f: Any) -> None:           # any thread: the Future's, or its loop's
            self._arrive(chain, target, *_outcome(f))

        if isinstance(future, ConcurrentFuture):
            future.add_done_callback(done)
            return
        try:
            future.get_loop().call_soon_threadsafe(future.add_done_callback, done)
        except RuntimeError as exc:       # the Future's loop is closed: it can never finish
            self._arrive(chain, target, None, exc)

    def _arrive(self, chain: Chain | None, slot: Any, result: Any, error: BaseException | None) -> None:
        """An outcome from any thread: queued, and one settle is posted per burst."""
        with self._lock:
            self._arrived.append((chain, slot, result, error))
            if self._posted:
                return
            self._posted = True
        self._loop.call_soon(self._settle_arrived)

    def _settle_arrived(self) -> None:
        with self._lock:
            arrived, self._arrived = self._arrived, []
            self._posted = False
        self._settle_all(arrived)

    def _gate(self, chain: Chain) -> None:
        chain.gated = True
        conn = chain.conn
        conn._paused |= GATE
        self._loop.update_interest(conn)

    # ------------------------------------------------------------------------------------
    # settling (loop thread)
    # ------------------------------------------------------------------------------------
    def settle_promises(self, outcomes: list[tuple[Promise, Any, BaseException | None]]) -> None:
        """A batch of Promise outcomes (posted by coroutines.py)."""
        arrived = []
        for promise, result, error in outcomes:
            target = promise.target
            promise.target = promise.on_cancel = None       # no cycles left behind
            if target is not None and not promise.cancelled:
                if type(target) is tuple:
                    arrived.append((target[0], target[1], result, error))
                else:
                    arrived.append((None, target, result, error))     # when_done
        self._settle_all(arrived)

    def _settle_all(self, arrived: list[tuple[Chain | None, Any, Any, BaseException | None]]) -> None:
        """Mark every outcome, then write what is ready once per connection."""
        chains: dict[int, Chain] = {}
        for chain, slot, result, error in arrived:
            if chain is None:                 # when_done: `slot` is the function
                try:
                    slot(result, error)
                except Exception:
                    log.exception("deferred reply callback %r raised", slot)
                continue
            if chain.dead or slot.done:
                continue            # the connection finished: nothing is sent to it
            slot.future = None      # the Future's callback refers to the slot: no cycle
            slot.done = True
            slot.result, slot.error = result, error
            chain.unfinished -= 1
            if slot.barrier:
                chain.barriers -= 1
            chains[id(chain)] = chain
        for chain in chains.values():
            if not chain.dead:
                self._advance(chain)

    def _advance(self, chain: Chain) -> None:
        """Write what is ready, then hand over the messages that waited while the gate was shut."""
        conn = chain.conn
        reader = self._loop.reader
        while conn._state != CLOSED and conn._held is chain:
            self._release(chain)
            if conn._state != OPEN:
                if conn._held is None:
                    self._loop.out.mark(conn)     # closing: the flush finishes it now
                return
            if chain.gated and chain.unfinished < self._max and not chain.barriers:
                chain.gated = False
            if chain.gated or not chain.waiting:
                break
            while chain.waiting and not chain.gated and conn._state == OPEN:
                ctx, message = chain.waiting.popleft()
                reader.deliver(conn, ctx, message)
        if conn._state == OPEN and conn._paused & GATE and not chain.gated:
            conn._paused &= ~GATE
            reader.resume(conn)               # leftovers in the input ring, then the socket
            self._loop.update_interest(conn)
        if chain.close_after and conn._held is None and conn._state == OPEN:
            self._loop.closer.close(conn, None, "peer")

    def _reply_now(self, conn: Connection, data: Any) -> None:
        """A reply through the connection's protocol: the loop's, or a dialed one's own."""
        side = conn._side
        if side is None:
            self._loop.out.reply(conn, data, _SOURCE)
        else:
            side.queue(conn, data, True, _SOURCE)

    def _release(self, chain: Chain) -> None:
        """Write the chain's head up to its first unfinished Slot; close it when empty."""
        conn = chain.conn
        out = self._loop.out
        entries = chain.entries
        conn._held = None                 # what follows goes through the ordinary output path
        conn._q = None
        try:
            while entries and conn._state != CLOSED:
                e = entries[0]
                if type(e) is Slot:
                    before, e.before = e.before, None
                    for kind, data in before or ():   # its coroutine's sends: at the head now
                        if kind == _REPLY:
                            self._reply_now(conn, data)
                        else:
                            out.raw(conn, data)
                    if not e.done:
                        break
                    entries.popleft()
                    if e.error is not None:
                        chain.cancel()            # the rest is dropped with the connection
                        self._loop.closer.fail(conn, e.error)
                        return
                    result = e.result
                    if e.barrier or result is None:
                        continue
                    if is_deferred(result):          # a Future resolving to a Future: wait again
                        e.future, e.done = result, False
                        entries.appendleft(e)
                        chain.unfinished += 1
                        self._watch(result, chain, e)
                        break
                    self._reply_now(conn, result)
                else:
                    entries.popleft()
                    kind, data = e
                    if kind == _REPLY:
                        self._reply_now(conn, data)
                    else:
                        out.raw(conn, data)
        except Exception as exc:        # a result that is not a reply (TypeError), packet() raising
            chain.cancel()
            self._loop.closer.fail(conn, exc)
            return
        finally:
            if entries or chain.waiting:
                if conn._state == CLOSED:
                    chain.cancel()
                else:
                    out.seal_pending(conn)        # written before what the chain still holds
                    conn._held = chain            # (a closing connection's is cancelled at finish)
                    conn._q = chain


def _log_error(conn: Any, result: Any, error: BaseException | None) -> None:
    if error is not None:
        log.error("async on_connect of %r raised", conn, exc_info=error)


def _outcome(future: Any) -> tuple[Any, BaseException | None]:
    """(result, None) or (None, error) of a done Future (a cancelled one: CancelledError)."""
    if future.cancelled():
        return None, CancelledError(f"the deferred reply {future!r} was cancelled")
    error = future.exception()
    return (None, error) if error is not None else (future.result(), None)


__all__ = ["GATE", "Chain", "Deferrals", "Promise", "calling_promise", "enter_promise",
           "is_deferred"]
