"""Unpacking: a protocol's own `unpacket` run over a connection's input, for accepted
connections (reading.py, generic protocols and TLS) and dialed ones (outbound.py) alike.

Rules:
- `unpack` calls unpacket until it returns None (it needs more bytes), the connection is no
  longer OPEN, or pending replies close its gate (deferred.py).  A message returned without
  consuming input is a ProtocolError (it would loop for ever); a ProtocolError closes the
  connection as bad input, any other error as a failure.
- `unpack_ring` runs it over the input ring in place (no copy) and then drops what was
  consumed; if a view of the ring outlived its call (arena.py) what is left moves to a fresh
  ring, and the old one is left to the view.  What follows (deadlines, the read flag,
  max_pending) is the caller's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ringbuf import RingBuffer, ViewBuffer

from .arena import RingRun
from .connection import OPEN
from .deferred import GATE
from .errors import ProtocolError

if TYPE_CHECKING:
    from .connection import Connection


def unpack(conn: Connection, buf: Any, protocol: Any, unpacket: Callable[..., Any],
           on_message: Callable[..., Any], reply: Callable[[Connection, Any, str], None],
           source: str, view_min: int) -> None:
    """unpacket(conn, buf) until it needs more: each message to on_message, a reply that is
    not None to reply(conn, res, source).  A memoryview message shorter than `view_min` goes
    to on_message as bytes (view_min 0: as unpacket made it)."""
    while conn._state == OPEN and not conn._paused & GATE:
        before = len(buf)
        try:
            msg = unpacket(conn, buf)
            if msg is None:
                break
            if len(buf) == before:
                raise ProtocolError(f"{type(protocol).__name__}.unpacket returned a message "
                                    "without consuming input")
            data = msg[1]
            if view_min and type(data) is memoryview and len(data) < view_min:
                data = data.tobytes()
            res = on_message(conn, msg[0], data)
            if res is not None:
                reply(conn, res, source)
        except ProtocolError as exc:
            conn._loop.closer.bad_input(conn, str(exc), exc)
            return
        except Exception as exc:
            conn._loop.closer.fail(conn, exc)
            return


def unpack_ring(conn: Connection, unpack_buf: Callable[[Connection, Any], None],
                read_max: int) -> bool:
    """unpack_buf(conn, buf) over the input ring in place, then drop what it consumed.  False
    when the ring is no longer the connection's (the calls closed or replaced it)."""
    ring = conn._in
    run = RingRun(ring)
    buf = ViewBuffer(run.mv)
    unpack_buf(conn, buf)
    consumed = len(run.mv) - len(buf)
    del buf
    kept = run.escaped()
    if conn._in is not ring:
        return False
    ring.retrieve(consumed)
    if kept:
        relocate(conn, read_max)
    return True


def relocate(conn: Connection, read_max: int) -> None:
    """A view of the ring outlived its call: leave the ring to it, go on in a fresh one."""
    old = conn._in
    if old is None:
        return
    ring = conn._in = RingBuffer(max(len(old), read_max))
    ring.write(old.peek_all())


__all__ = ["relocate", "unpack", "unpack_ring"]
