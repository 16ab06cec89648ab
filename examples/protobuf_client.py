"""Client for examples/protobuf_server.py: sends Pings (pipelined) and checks the Pongs.

    python examples/protobuf_client.py --port 1835 [--count 10]

It frames and parses with the same ProtobufProtocol the server uses, over a RingBuffer.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "proto"))

import chat_pb2  # noqa: E402  (generated from examples/proto/chat.proto)

from reactor.plugins.protobuf import ProtobufProtocol  # noqa: E402
from ringbuf import RingBuffer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1835)
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    codec = ProtobufProtocol(chat_pb2.Pong)
    pings = [chat_pb2.Ping(seq=i, text=f"ping {i}") for i in range(args.count)]
    with socket.create_connection((args.host, args.port), timeout=5) as sock:
        sock.sendall(b"".join(codec.encode(p) for p in pings))
        ring = RingBuffer(4096)
        pongs = []
        while len(pongs) < len(pings):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            ring.write(chunk)
            while (got := codec.unpacket(None, ring)) is not None:
                pongs.append(got)
    for ping, (name, pong) in zip(pings, pongs):
        assert name == "pygev.example.Pong" and pong.seq == ping.seq and pong.text == ping.text.upper(), pong
        print(f"{name} seq={pong.seq} text={pong.text!r} served_by={pong.served_by}")
    print(f"ok: {len(pongs)} pongs")


if __name__ == "__main__":
    main()
