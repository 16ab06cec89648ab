"""Where a server's CPU goes per message: user space against the kernel, and syscalls.

    python -m bench.cpu_split                      # the default cells, pygev (both backends) and uvloop
    python -m bench.cpu_split --cells get50p16,raw50

It answers "how far can this server still go": the kernel's share (TCP on loopback, waking the
peer) is what any server on this machine pays for the same traffic, so a server's ratio against
another is bounded by (the other's total) / (its own kernel time + the work its handler must do).
Each run: the server pinned to --server-cpu, bench/loadgen.c to --client-cpu, utime and stime
from /proc over a window in the middle of the measurement, syscalls from `perf stat` tracepoints
over the same window (0 when perf is not available), messages from the load generator.  Loopback
only, bounded in time; every process it starts is ended by PID.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from . import loadgen
from .procstat import cpu_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSCALLS = ("read", "recvfrom", "write", "sendto", "sendmsg", "epoll_wait", "epoll_pwait",
            "io_uring_enter")
EXAMPLES = {"get": "examples/line_get.py", "rpc": "examples/rpc.py", "raw": "examples/echo.py"}
PEERS = {"get": "bench/peers/line_get_server.py", "rpc": "bench/peers/rpc_server.py",
         "raw": "bench/peers/protocol_echo.py"}
SERVERS = {
    "pygev epoll": lambda kind: ["env", "PYGEV_BACKEND=epoll", sys.executable, EXAMPLES[kind]],
    "pygev io_uring": lambda kind: ["env", "PYGEV_BACKEND=io_uring", sys.executable, EXAMPLES[kind]],
    "uvloop": lambda kind: [sys.executable, PEERS[kind], "--loop", "uvloop"],
}
CELLS = {"get50p16": ("get", 50, 16), "rpc50p16": ("rpc", 50, 16), "raw1": ("raw", 1, 1),
         "raw50": ("raw", 50, 1), "raw1000": ("raw", 1000, 1)}


def count_syscalls(pid: int, seconds: float) -> int:
    """Syscalls `pid` entered in the next `seconds` (0 without perf)."""
    if shutil.which("perf") is None:
        time.sleep(seconds)
        return 0
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
    proc = subprocess.run(["perf", "stat", "-x,", "-e", events, "-p", str(pid), "--", "sleep",
                           str(seconds)], capture_output=True, text=True, timeout=seconds + 30)
    total = 0
    for line in proc.stderr.splitlines():
        field = line.split(",")[0]
        if field.isdigit():
            total += int(field)
    return total


def measure(kind: str, conns: int, pipeline: int, argv: list[str], port: int,
            args: argparse.Namespace) -> dict:
    binary = loadgen.build()
    server = subprocess.Popen(["taskset", "-c", str(args.server_cpu), *argv, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    client = None
    try:
        time.sleep(1.0)
        client = subprocess.Popen(
            ["taskset", "-c", str(args.client_cpu), str(binary), "--port", str(port), "--mode", kind,
             "--conns", str(conns), "--pipeline", str(pipeline), "--duration", str(args.duration),
             "--warmup", "1", "--server-pid", str(server.pid), "--size", "64"],
            stdout=subprocess.PIPE, text=True)
        time.sleep(1.0 + args.duration / 4)            # past the warm-up, into the measurement
        before = cpu_split(server.pid)
        window = args.duration / 2
        nsys = count_syscalls(server.pid, window)
        after = cpu_split(server.pid)
        out, _ = client.communicate(timeout=args.duration + 60)
        result = json.loads(out)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    if before is None or after is None or result.get("error"):
        raise RuntimeError(f"measurement failed: {result.get('error', 'no /proc figures')}")
    rate = result["msgs"] / args.duration
    per = 1e6 / (rate * window)
    return {"rate": rate, "user": (after[0] - before[0]) * per, "sys": (after[1] - before[1]) * per,
            "syscalls": nsys / (rate * window)}


def handler_floor(repeat: int = 5, number: int = 100_000) -> float:
    """us per message of the least any server can do for the line GET service in Python:
    examples/line_get.py's handler called from a list comprehension over 16 lines split by
    bytes.split, the replies joined (what a read costs without any framework around it)."""
    import importlib.util
    import timeit
    spec = importlib.util.spec_from_file_location("line_get", os.path.join(ROOT, EXAMPLES["get"]))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    on_message = module.Get().on_message
    chunk = b"".join(b"GET key%04d\n" % i for i in range(16))

    def one_read() -> bytes:
        lines = chunk.split(b"\n")
        lines.pop()
        replies = [on_message(None, None, line) for line in lines]
        replies.append(b"")
        return b"\n".join(replies)
    best = min(timeit.repeat(one_read, number=number, repeat=repeat))
    return best / number / 16 * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated: {', '.join(CELLS)}")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated: {', '.join(SERVERS)}")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--port", type=int, default=19600, help="first port used (one per run)")
    args = parser.parse_args()
    cells = [c for c in args.cells.split(",") if c]
    servers = [s for s in args.servers.split(",") if s]
    for name in cells:
        if name not in CELLS:
            parser.error(f"unknown cell {name!r}")
    for name in servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}")
    if "get50p16" in cells:
        print(f"get handler floor (list comprehension, no framework): {handler_floor():.3f} us/msg\n")
    print("| cell | server | msgs/s | user us/msg | kernel us/msg | total us/msg | syscalls/msg |")
    print("|---|---|--:|--:|--:|--:|--:|")
    port = args.port
    for cell in cells:
        kind, conns, pipeline = CELLS[cell]
        for server in servers:
            m = measure(kind, conns, pipeline, SERVERS[server](kind), port, args)
            port += 1
            print(f"| {cell} | {server} | {m['rate']:,.0f} | {m['user']:.2f} | {m['sys']:.2f} | "
                  f"{m['user'] + m['sys']:.2f} | {m['syscalls']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
