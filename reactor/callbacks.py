"""Whose callbacks serve a connection: an accepted one is served by its loop's handler and
protocol (bound once per loop, the hot path never asks); a dialed one (`loop.connect`) by the
handler and protocol it was dialed with, kept on its `_side`.  Used on the slow paths only:
closing, end of input, and the output hooks `on_high_water` / `on_drain`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .connection import CLOSED
from .handler import Handler

if TYPE_CHECKING:
    from .connection import Connection
    from .loop import EventLoop

log = logging.getLogger("reactor.loop")


def handler_of(loop: EventLoop, conn: Connection) -> Any:
    side = conn._side
    return loop.handler if side is None else side.handler


def protocol_of(loop: EventLoop, conn: Connection) -> Any:
    side = conn._side
    return loop.protocol if side is None else side.protocol


def output_hook(loop: EventLoop, conn: Connection, name: str) -> None:
    """Run Handler.<name>(conn) ("on_high_water" / "on_drain") at the loop's next turn: never
    inside the flush that noticed it, so the hook may send, pause or close freely.  Nothing is
    posted for a handler that does not override it."""
    handler = handler_of(loop, conn)
    fn = getattr(handler, name, None)
    if fn is None or getattr(type(handler), name, None) is getattr(Handler, name):
        return
    loop.call_soon(_run_hook, loop, conn, fn)


def _run_hook(loop: EventLoop, conn: Connection, fn: Any) -> None:
    if conn._state == CLOSED:
        return
    try:
        fn(conn)
    except Exception as exc:
        loop.closer.fail(conn, exc)


__all__ = ["handler_of", "output_hook", "protocol_of"]
