"""Caps concurrent connections: over `--max` the new connection is closed at once, and
on_connect is never called for it (gev's maxconnection example).

    python examples/maxconnection.py --port 1835 --max 2
"""
from __future__ import annotations

import argparse
import logging

from reactor import Handler, Server

log = logging.getLogger("example.maxconnection")


class Counted(Handler):
    def __init__(self) -> None:
        self.server: Server | None = None

    def on_connect(self, conn):
        log.info("accepted %s (%d open)", conn.peer_addr, self.server.connection_count if self.server else -1)

    def on_message(self, conn, ctx, data):
        return data

    def on_close(self, conn, error):
        log.info("closed (%s)", error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1835)
    parser.add_argument("--max", type=int, default=2, help="max_connections")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handler = Counted()
    server = Server(handler, address=f"{args.host}:{args.port}", max_connections=args.max)
    handler.server = server
    server.start()


if __name__ == "__main__":
    main()
