"""TCP proxy: every client gets its own upstream connection, bytes piped both ways.

    python examples/proxy.py --port 8000 --upstream 127.0.0.1:6379 [--loops N] [--workers N]

How it works (the whole proxy is the three small classes below):
- `on_connect` of an accepted client dials the upstream from the client's own loop
  (`conn.loop.connect`, which never blocks) and pauses reading the client until the upstream
  is connected (bytes sent before that would wait in memory, so none are read).
- Each side's `on_message` sends what it read to the other side.
- Backpressure: when one side's unsent output passes `write_high_water`, pygev calls
  `on_high_water(conn)` and the proxy pauses the *other* side (the one feeding it); at
  `write_low_water` `on_drain(conn)` resumes it.  So memory per client stays around the high
  water mark whichever side reads slowly.
- Half-close passes through: a FIN from one side (`on_eof`) becomes `shutdown_write()` on the
  other, and the connection stays open to carry the other direction; once both directions
  have ended, both connections close.  A close or reset of one side closes the other (after
  what is queued for it has been written).
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from reactor import Connection, ConnectionClosed, Handler, Server

log = logging.getLogger("proxy")


class Link:
    """One direction's end: `conn.context` of each side, pointing at the other side."""

    __slots__ = ("peer", "eof")

    def __init__(self, peer: Connection) -> None:
        self.peer = peer
        self.eof = False        # this side sent FIN


class Splice(Handler):
    """What both sides do: forward bytes, flow control, half-close, close."""

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> None:
        try:
            conn.context.peer.send(data)
        except ConnectionClosed:
            conn.close()

    def on_high_water(self, conn: Connection) -> None:
        conn.context.peer.pause_reading()       # conn cannot take more: stop reading its feeder

    def on_drain(self, conn: Connection) -> None:
        conn.context.peer.resume_reading()

    def on_eof(self, conn: Connection) -> bool:
        link = conn.context
        link.eof = True
        peer = link.peer
        try:
            peer.shutdown_write()               # after what is queued for it
        except ConnectionClosed:
            pass
        if peer.context is not None and peer.context.eof:
            conn.close()                        # both directions are done
            peer.close()
        return True                             # keep conn open: the other direction goes on

    def on_close(self, conn: Connection, error: BaseException | None) -> None:
        if conn.context is not None:
            conn.context.peer.close()


class Upstream(Splice):
    """The dialed side."""

    def on_connect(self, conn: Connection) -> None:
        conn.context.peer.resume_reading()

    def on_close(self, conn: Connection, error: BaseException | None) -> None:
        if error is not None:           # a failed dial (refused, timed out) or a reset
            log.warning("upstream %s: %s", conn.peer_addr or "?", error)
        super().on_close(conn, error)


class Proxy(Splice):
    """The accepted side: dials the upstream for each client."""

    def __init__(self, upstream: str, connect_timeout: float = 10.0) -> None:
        self.upstream = upstream
        self.connect_timeout = connect_timeout
        self.dialer = Upstream()

    def on_connect(self, conn: Connection) -> None:
        conn.pause_reading()                    # until the upstream is connected
        up = conn.loop.connect(self.upstream, self.dialer, timeout=self.connect_timeout)
        conn.context = Link(up)                 # callbacks of `up` never run inside connect()
        up.context = Link(conn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--upstream", required=True, help="host:port to forward to")
    parser.add_argument("--loops", type=int, default=1, help="event loops (threads) per process")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Server(Proxy(args.upstream), address=f"{args.host}:{args.port}", num_loops=args.loops,
           workers=args.workers).start()


if __name__ == "__main__":
    main()
