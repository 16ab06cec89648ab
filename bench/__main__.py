"""python -m bench: run pygev's benchmark matrix and write bench/RESULTS.md and charts in bench/out/.

Examples:
    python -m bench                                  # every cell, every server, 3 reps of 3 s
    python -m bench --cells request                  # only the request / computed-reply cells
    python -m bench --cells request --quick          # the same, 1 rep of 0.5 s: a check, not a result
    python -m bench --quick                          # the whole matrix, 1 rep each, in a few minutes
    python -m bench --cells 'get*,rpc50p16' --servers pygev,uvloop --reps 5 --duration 2
    python -m bench --list                           # cells, groups and servers

The request / computed-reply cells (groups get, rpc, request: a handler that builds each reply from
its request) run and are reported first; the echo cells (group echo) are the shortcut where the reply
is the very bytes that were read.

Each server runs pinned to one CPU (taskset -c 0) and the client to another (taskset -c 1). Servers of a
cell are interleaved rep by rep; the table holds medians and the median per-rep ratio to uvloop. A
missing or broken server (or client tool) shows up as a failed cell; nothing is installed for you.
Needs: a C compiler (bench/loadgen.c is built on demand into ~/.cache/pygev-bench), uvloop,
websockets, matplotlib; redis-server and redis-benchmark (Debian: redis-server, redis-tools) for RESP.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench import cells as cells_mod
from bench import loadgen, report
from bench.cells import RunContext
from bench.run import run_matrix
from bench.servers import SERVERS, server_names

HERE = Path(__file__).resolve().parent
QUICK_SERVERS = "pygev,asyncio,uvloop,redis"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cells",
        default="all",
        help="comma-separated cell names, groups (request = get + rpc, echo = raw + framed + ws, memory, "
        "resp, all) or glob patterns such as 'resp-*-p16' (default: all)",
    )
    parser.add_argument(
        "--servers",
        default=None,
        help=f"comma-separated server names, in the order they run: {', '.join(server_names())} "
        f"(default: all; with --quick: {QUICK_SERVERS}). uvloop is the ratio baseline",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="interleaved repetitions per cell (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="measured seconds per run (default 3; 0.5 with --quick)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="warm-up seconds before each measurement (default 1; 0.2 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 rep, short runs and the main servers only: for checking that cells work, not for results",
    )
    parser.add_argument(
        "--memory-conns", type=int, default=10000, help="idle connections for the memory cell (default 10000)"
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the servers are pinned to (default 0)")
    parser.add_argument(
        "--client-cpu", type=int, default=1, help="CPU the load generator is pinned to (default 1)"
    )
    parser.add_argument(
        "--output", type=Path, default=HERE / "RESULTS.md", help="report file (default bench/RESULTS.md)"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=HERE / "out",
        help="charts and results.json go here (default bench/out)",
    )
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    parser.add_argument("--list", action="store_true", help="list cells, groups and servers, then exit")
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 0.5 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 1.0
    if args.servers is None and args.quick:
        args.servers = QUICK_SERVERS
    if args.reps < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--reps must be >= 1, --duration > 0, --warmup >= 0")
    return args


def list_everything() -> None:
    print("cells:")
    for cell in cells_mod.CELLS:
        print(f"  {cell.name:<22} [{cell.kind}] {cell.title}")
    print("groups: " + ", ".join(cells_mod.GROUPS))
    print("servers:")
    for spec in SERVERS:
        why = spec.missing()
        print(
            f"  {spec.name:<17} [{spec.kind:<6}] {spec.label}" + (f"   (unavailable: {why})" if why else "")
        )


def pinning(server_cpu: int, client_cpu: int) -> tuple[list[str], list[str], bool]:
    """taskset prefixes for server and client; empty (unpinned) when taskset or the CPUs are missing."""
    cpus = os.sched_getaffinity(0)
    if shutil.which("taskset") and server_cpu in cpus and client_cpu in cpus and server_cpu != client_cpu:
        return ["taskset", "-c", str(server_cpu)], ["taskset", "-c", str(client_cpu)], True
    print(
        "warning: not pinning (taskset missing or CPUs unavailable); numbers will be noisier", file=sys.stderr
    )
    return [], [], False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        list_everything()
        return 0
    try:
        selected = cells_mod.select(args.cells)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.servers.split(",") if n.strip()] if args.servers else None
    unknown = [n for n in names or [] if n not in server_names()]
    if unknown:
        print(
            f"error: unknown server(s) {', '.join(unknown)}; known: {', '.join(server_names())}",
            file=sys.stderr,
        )
        return 2

    server_pin, client_pin, pinned = pinning(args.server_cpu, args.client_cpu)
    try:
        binary = loadgen.build()
    except RuntimeError as exc:
        print(f"warning: {exc}; loadgen cells will fail", file=sys.stderr)
        binary = None
    ctx = RunContext(
        loadgen=binary,
        client_pin=client_pin,
        duration=args.duration,
        warmup=args.warmup,
        memory_conns=args.memory_conns,
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="pygev-bench-logs-"))
    print(f"server logs: {log_dir}", file=sys.stderr)
    results_json = args.out_dir / "results.json"

    def save(records: list[dict]) -> None:
        results_json.write_text(json.dumps(records, indent=1, default=str))

    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every server started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    records: list[dict] = []
    try:
        records = run_matrix(selected, names, args.reps, ctx, log_dir, server_pin, on_cell=save)
    except KeyboardInterrupt:
        print("interrupted: servers stopped, nothing written", file=sys.stderr)
        return 130

    rows = report.aggregate(records, selected)
    chart_paths = [] if args.no_charts else report.charts(rows, selected, args.out_dir)
    chart_links = [os.path.relpath(p, args.output.resolve().parent) for p in chart_paths]
    settings = {
        "server_cpu": args.server_cpu,
        "client_cpu": args.client_cpu,
        "pinned": pinned,
        "reps": args.reps,
        "duration": args.duration,
        "warmup": args.warmup,
        "memory_conns": args.memory_conns,
    }
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = report.markdown(rows, selected, settings, command.strip(), chart_links)
    args.output.write_text(text + "\n")
    print(text)
    print(
        f"\nwritten: {args.output}, {results_json}" + "".join(f", {p}" for p in chart_paths), file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
