"""Line GET server: each request is a line `GET <key>`, each reply the key's value on a line of its own.

    python examples/line_get.py --port 1835
    printf 'GET key0042\\nGET nokey\\n' | nc -q1 127.0.0.1 1835

The store holds 1,000 keys, key0000 .. key0999, each with a 37-byte value; an unknown key gets
`NOT_FOUND`, a line that is not a GET gets `BAD_REQUEST`.  LineProtocol splits the lines in C (a
trailing CR is dropped) and the newline is put back after each reply as the turn's replies are
joined.  This is the bench's
`get` workload (bench/loadgen.c --mode get).
"""
from __future__ import annotations

import argparse
import logging

from reactor import Handler, Server
from reactor.codec import LineProtocol

# key0042 -> b"value-0042-abcdefghijklmnopqrstuvwxyz" (37 bytes)
STORE = {b"key%04d" % i: b"value-%04d-abcdefghijklmnopqrstuvwxyz" % i for i in range(1000)}


class Get(Handler):
    def on_message(self, conn, ctx, data):       # data: the line (bytes), without the b"\n"
        if data[:4] == b"GET ":
            return STORE.get(data[4:], b"NOT_FOUND")
        return b"BAD_REQUEST"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1835)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = Server(Get(), address=f"{args.host}:{args.port}", num_loops=args.loops,
                    workers=args.workers, protocol=LineProtocol())
    server.start()


if __name__ == "__main__":
    main()
