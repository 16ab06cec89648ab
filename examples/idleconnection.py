"""Closes connections that have been idle (no read or write) for `--idle` seconds - gev's
idleconnection example.  on_close receives a TimeoutError for those.

    python examples/idleconnection.py --port 1837 --idle 5
"""
from __future__ import annotations

import argparse
import logging

from reactor import Handler, Server

log = logging.getLogger("example.idleconnection")


class Echo(Handler):
    def on_message(self, conn, ctx, data):
        return data

    def on_close(self, conn, error):
        if isinstance(error, TimeoutError):
            log.info("closed an idle connection: %s", error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1837)
    parser.add_argument("--idle", type=float, default=5.0, help="idle_timeout in seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Server(Echo(), address=f"{args.host}:{args.port}", idle_timeout=args.idle).start()


if __name__ == "__main__":
    main()
