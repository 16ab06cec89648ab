"""Length-framed RPC server: every frame is a 4-byte big-endian length + payload, and each request
frame gets a reply frame computed from it.

    python examples/rpc.py --port 1836

Request payload, 8 bytes: op (u32 BE), arg (u32 BE).  Reply payload, 36 bytes: status (u32 BE,
0 = ok, 1 = unknown op, 2 = bad request), result (u64 BE), a fixed 24-byte tail.  Ops: 1 = arg + 1,
2 = arg * arg.  LengthFieldProtocol splits the frames in C and puts the length header in front of
each reply.  This is the bench's `rpc` workload (bench/loadgen.c --mode rpc).
"""
from __future__ import annotations

import argparse
import logging
import struct

from reactor import Handler, Server
from reactor.codec import LengthFieldProtocol

REQUEST = struct.Struct(">II")      # op, arg
REPLY = struct.Struct(">IQ24s")     # status, result, tail
TAIL = b"pygev-rpc-reply-tail-24b"
OK, UNKNOWN_OP, BAD_REQUEST = 0, 1, 2


class Rpc(Handler):
    def on_message(self, conn, ctx, data):       # data: the payload (bytes), without the header
        if len(data) != REQUEST.size:
            return REPLY.pack(BAD_REQUEST, 0, TAIL)
        op, arg = REQUEST.unpack(data)
        if op == 1:
            return REPLY.pack(OK, arg + 1, TAIL)
        if op == 2:
            return REPLY.pack(OK, arg * arg, TAIL)
        return REPLY.pack(UNKNOWN_OP, 0, TAIL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1836)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = Server(Rpc(), address=f"{args.host}:{args.port}", num_loops=args.loops,
                    workers=args.workers, protocol=LengthFieldProtocol())
    server.start()


if __name__ == "__main__":
    main()
