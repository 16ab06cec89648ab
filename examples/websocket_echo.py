"""WebSocket echo server: every text or binary message goes back as it came.

    python examples/websocket_echo.py --port 8080 [--loops N] [--workers N] [--compression]

Try it with the `websockets` client:  python -m websockets ws://127.0.0.1:8080/
"""
from __future__ import annotations

import argparse
import logging

from reactor import Handler, Server
from reactor.plugins.websocket import WebSocketProtocol


class Echo(Handler):
    def on_message(self, conn, ctx, data):
        return data          # str -> text frame, bytes -> binary frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--loops", type=int, default=1, help="event loops (threads) per process")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--max-message-size", type=int, default=1 << 20)
    parser.add_argument("--compression", action="store_true", help="accept permessage-deflate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    protocol = WebSocketProtocol(max_message_size=args.max_message_size, compression=args.compression)
    server = Server(Echo(), address=f"{args.host}:{args.port}", protocol=protocol,
                    num_loops=args.loops, workers=args.workers)
    server.start()


if __name__ == "__main__":
    main()
