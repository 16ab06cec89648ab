"""Client for examples/protocol.py: sends length-framed messages and checks the echoes.

    python examples/protocol_client.py --port 1834 [--count 10]
"""
from __future__ import annotations

import argparse
import socket
import struct


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1834)
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    with socket.create_connection((args.host, args.port), timeout=5) as sock:
        messages = [f"message {i}: {'x' * i}".encode() for i in range(args.count)]
        sock.sendall(b"".join(struct.pack(">I", len(m)) + m for m in messages))   # pipelined
        for m in messages:
            (length,) = struct.unpack(">I", recv_exactly(sock, 4))
            payload = recv_exactly(sock, length)
            assert payload == m, (payload, m)
            print(f"echoed {length:4d} bytes: {payload[:40]!r}")
    print(f"ok: {args.count} frames echoed")


if __name__ == "__main__":
    main()
