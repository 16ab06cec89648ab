"""Protobuf server: answers every Ping with a Pong (gev's protobuf example, frames
u32 length | u16 name length | message name | payload).

    python examples/protobuf_server.py --port 1835
    python examples/protobuf_client.py --port 1835
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "proto"))

import chat_pb2  # noqa: E402  (generated from examples/proto/chat.proto)

from reactor import Handler, Server  # noqa: E402
from reactor.plugins.protobuf import ProtobufProtocol  # noqa: E402


class PingPong(Handler):
    def on_message(self, conn, ctx, data):
        # ctx is the message's full name, data the decoded message
        if ctx == "pygev.example.Ping":
            return chat_pb2.Pong(seq=data.seq, text=data.text.upper(), served_by=os.getpid())
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1835)
    parser.add_argument("--loops", type=int, default=1, help="event loops (threads) per process")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    protocol = ProtobufProtocol(chat_pb2.Ping, chat_pb2.Pong, max_frame_length=1 << 20)
    server = Server(PingPong(), address=f"{args.host}:{args.port}", protocol=protocol, num_loops=args.loops)
    server.start()


if __name__ == "__main__":
    main()
