"""Length-framed echo server: every frame is a 4-byte big-endian length + payload, and each
frame is echoed back framed the same way (gev's protocol example).

    python examples/protocol.py --port 1834
    python examples/protocol_client.py --port 1834

The built-in LengthFieldProtocol is split in C; on_message gets each payload as a memoryview and
returning it sends header + payload without copying the payload.
"""
from __future__ import annotations

import argparse
import logging

from reactor import Handler, Server
from reactor.codec import LengthFieldProtocol


class FrameEcho(Handler):
    def on_message(self, conn, ctx, data):
        return data          # packet() puts the 4-byte length back in front


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1834)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = Server(FrameEcho(), address=f"{args.host}:{args.port}", num_loops=args.loops,
                    workers=args.workers, protocol=LengthFieldProtocol())
    server.start()


if __name__ == "__main__":
    main()
