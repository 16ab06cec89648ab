"""Sendfile cell client: one connection, `--transfers` requests, each answered by a `--size` byte file that
is read and discarded (counted).  Prints one JSON line: MB/s over the whole run and the server's CPU time.

    python -m bench.sendfile_client --port N --pid PID [--transfers 4] [--size 67108864]
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from bench.procstat import cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--transfers", type=int, default=4)
    parser.add_argument("--size", type=int, default=64 << 20)
    args = parser.parse_args()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    out: dict = {"error": None}
    with socket.create_connection(("127.0.0.1", args.port), timeout=30) as sock:
        sock.sendall(b"GET\n")                  # one transfer to warm up (page cache, buffers)
        got = 0
        while got < args.size:
            n = sock.recv_into(view)
            if not n:
                raise SystemExit(json.dumps({"error": f"closed after {got} bytes of the warm-up"}))
            got += n
        cpu0 = cpu_seconds(args.pid)
        t0 = time.monotonic()
        total = 0
        for i in range(args.transfers):
            sock.sendall(b"GET\n")
            got = 0
            while got < args.size:
                n = sock.recv_into(view)
                if not n:
                    out["error"] = f"closed after {got} bytes of transfer {i}"
                    break
                got += n
            total += got
            if out["error"]:
                break
        elapsed = time.monotonic() - t0
        cpu1 = cpu_seconds(args.pid)
    if total != args.transfers * args.size and not out["error"]:
        out["error"] = f"received {total} bytes, expected {args.transfers * args.size}"
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    out.update(bytes=total, seconds=elapsed, mb_per_s=total / elapsed / 1e6, server_cpu_s=cpu)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
