"""Pushes a message to every client each second from a timer, skipping clients that are not
reading (their queued output is over a limit) - gev's pushmessage example.

    python examples/pushmessage.py --port 1836 --interval 1
"""
from __future__ import annotations

import argparse
import logging
import time

from reactor import Connection, Handler, Server

SLOW_CLIENT_BYTES = 64 << 10
log = logging.getLogger("example.pushmessage")


class Push(Handler):
    def __init__(self) -> None:
        self.clients: set[Connection] = set()
        self.skipped = 0

    def on_connect(self, conn):
        self.clients.add(conn)

    def on_close(self, conn, error):
        self.clients.discard(conn)

    def broadcast(self) -> None:
        line = f"tick {time.time():.3f}\n".encode()
        for conn in list(self.clients):
            if conn.pending_write > SLOW_CLIENT_BYTES:
                self.skipped += 1        # a slow reader: don't let its backlog grow
                continue
            conn.send(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1836)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handler = Push()
    server = Server(handler, address=f"{args.host}:{args.port}")
    server.run_every(args.interval, handler.broadcast)     # runs on the event loop's thread
    server.start()


if __name__ == "__main__":
    main()
