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
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import loadgen
from .procstat import cpu_split
from .servers import ROOT, ServerProcess, ServerSpec, specs_for

SYSCALLS = ("read", "recvfrom", "write", "sendto", "sendmsg", "epoll_wait", "epoll_pwait",
            "io_uring_enter")
#: bench/servers.py names: pygev's example on each backend, and the uvloop peer of the service
SERVERS = ("pygev", "pygev-uring", "uvloop")
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


def measure(spec: ServerSpec, conns: int, pipeline: int, args: argparse.Namespace,
            log_dir: Path) -> dict:
    """One run of `spec` under the load generator: msgs/s, user and kernel us per message,
    syscalls per message."""
    binary = loadgen.build()
    server = ServerProcess(spec, ["taskset", "-c", str(args.server_cpu)], log_dir)
    client = None
    try:
        why = server.wait_ready()
        if why is not None:
            raise RuntimeError(f"{spec.name}: {why}")
        client = subprocess.Popen(
            ["taskset", "-c", str(args.client_cpu), str(binary), "--port", str(server.port),
             "--mode", spec.kind, "--conns", str(conns), "--pipeline", str(pipeline),
             "--duration", str(args.duration), "--warmup", "1", "--server-pid", str(server.pid),
             "--size", "64"],
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
        server.stop()
    if before is None or after is None or result.get("error"):
        raise RuntimeError(f"measurement failed: {result.get('error') or 'no /proc figures'}")
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
    spec = importlib.util.spec_from_file_location("line_get", ROOT / "examples" / "line_get.py")
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
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated bench/servers.py names (default {', '.join(SERVERS)})")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    args = parser.parse_args()
    cells = [c for c in args.cells.split(",") if c]
    names = [s for s in args.servers.split(",") if s]
    for name in cells:
        if name not in CELLS:
            parser.error(f"unknown cell {name!r}")
    if "get50p16" in cells:
        print(f"get handler floor (list comprehension, no framework): {handler_floor():.3f} us/msg\n")
    print("| cell | server | msgs/s | user us/msg | kernel us/msg | total us/msg | syscalls/msg |")
    print("|---|---|--:|--:|--:|--:|--:|")
    with tempfile.TemporaryDirectory(prefix="pygev-cpu-split-") as log_dir:
        for cell in cells:
            kind, conns, pipeline = CELLS[cell]
            specs = specs_for(kind, names)
            if len(specs) != len(names):
                parser.error(f"--servers: {kind} has no server named "
                             f"{', '.join(set(names) - {s.name for s in specs})}")
            for spec in specs:
                m = measure(spec, conns, pipeline, args, Path(log_dir))
                print(f"| {cell} | {spec.label} | {m['rate']:,.0f} | {m['user']:.2f} | "
                      f"{m['sys']:.2f} | {m['user'] + m['sys']:.2f} | {m['syscalls']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
