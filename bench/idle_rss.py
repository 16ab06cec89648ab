"""Client process for the memory cell: open N idle connections to an echo server, report its RSS growth.

    python -m bench.idle_rss --port N --pid SERVER_PID [--conns 10000]

Connections are opened in batches; each one echoes one 16-byte message (so the server has accepted
and served it) and then stays idle.  The server's VmRSS is read before the first connection and
after the last one, once things settle; the JSON result on stdout gives bytes per connection.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time

from bench.procstat import rss_bytes

MESSAGE = b"pygev-idle-rss.."
BATCH = 250


def open_idle(port: int, conns: int, timeout: float) -> list[socket.socket]:
    """Open `conns` connections, each verified with one echo; raises OSError on any failure."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < conns:
            batch = []
            for _ in range(min(BATCH, conns - len(socks))):
                sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                batch.append(sock)
                socks.append(sock)
            for sock in batch:
                sock.sendall(MESSAGE)
            for sock in batch:
                got = b""
                while len(got) < len(MESSAGE):
                    chunk = sock.recv(len(MESSAGE) - len(got))
                    if not chunk:
                        raise ConnectionError(f"server closed connection {len(socks)} during its echo")
                    got += chunk
                if got != MESSAGE:
                    raise ConnectionError(f"wrong echo {got!r}")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="server process whose VmRSS is read")
    parser.add_argument("--conns", type=int, default=10000)
    parser.add_argument("--settle", type=float, default=0.5, help="seconds to wait before the second reading")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-socket timeout, seconds")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.conns + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            print(json.dumps({"error": f"fd limit {hard} is below the {need} needed"}))
            return 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    before = rss_bytes(args.pid)
    started = time.monotonic()
    try:
        socks = open_idle(args.port, args.conns, args.timeout)
    except OSError as exc:
        print(json.dumps({"error": f"opening connections: {exc!r}"}))
        return 1
    opened = time.monotonic() - started
    time.sleep(args.settle)
    after = rss_bytes(args.pid)
    for sock in socks:
        sock.close()
    if before is None or after is None:
        print(json.dumps({"error": f"cannot read /proc/{args.pid}/status"}))
        return 1
    print(
        json.dumps(
            {
                "conns": args.conns,
                "rss_before": before,
                "rss_after": after,
                "bytes_per_conn": (after - before) / args.conns,
                "open_s": round(opened, 3),
                "error": None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
