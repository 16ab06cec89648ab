"""Echo server: every byte received is sent back, without a copy (gev's echo example).

    python examples/echo.py --port 1833 [--loops N] [--workers N]
"""
from __future__ import annotations

import argparse
import logging

from reactor import Handler, Server


class Echo(Handler):
    def on_message(self, conn, ctx, data):
        return data          # the memoryview over the read buffer goes straight back out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1833)
    parser.add_argument("--loops", type=int, default=1, help="event loops (threads) per process")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = Server(Echo(), address=f"{args.host}:{args.port}", num_loops=args.loops, workers=args.workers)
    server.start()


if __name__ == "__main__":
    main()
