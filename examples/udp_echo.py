"""UDP echo server: every datagram is sent back to its sender (one datagram, one message).

    python examples/udp_echo.py --port 1833 [--loops N]
"""
from __future__ import annotations

import argparse
import logging

from reactor import Handler, Server


class Echo(Handler):
    def on_message(self, conn, ctx, data):
        return data          # one datagram back to this peer (conn is the peer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1833)
    parser.add_argument("--loops", type=int, default=1, help="event loops (one SO_REUSEPORT socket each)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Server(Echo(), address=f"{args.host}:{args.port}", network="udp", num_loops=args.loops).start()


if __name__ == "__main__":
    main()
