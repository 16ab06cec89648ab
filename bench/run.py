"""Run the matrix: for every cell, its servers interleaved rep by rep (A B C A B C ...).

Servers of one cell run side by side on their own ports (idle ones cost nothing), so interleaving
needs no restarts; the memory cell starts a fresh server for every measurement.  A server that is
missing, does not start, or dies is recorded as a failed measurement, never an exception.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.cells import Cell, RunContext
from bench.servers import ServerProcess, ServerSpec, specs_for

Record = dict


class Progress:
    """One status line per measurement on stderr, with a count and a rough time estimate."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def step(self, cell: str, server: str, rep: int, reps: int, outcome: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        line = f"[{self.done:3d}/{self.total}] {cell:<20} rep {rep}/{reps} {server:<17} {outcome}"
        tail = f"  ({elapsed:4.0f} s, ~{eta:.0f} s left)"
        sys.stderr.write(line + tail + "\n")
        sys.stderr.flush()


def describe(result: dict, cell: Cell) -> str:
    """The outcome of one measurement in a few words, for the progress line."""
    if result.get("skipped"):
        return str(result["error"])[:100]
    if result.get("error"):
        return "FAILED: " + str(result["error"])[:100]
    if cell.unit == "bytes/conn":
        return f"{result['value']:,.0f} B/conn"
    cpu = result.get("cpu_us")
    return f"{result['value'] / 1000:9,.1f}k {cell.unit}" + (
        f"  {cpu:.2f} us CPU/msg" if cpu is not None else ""
    )


def measure_cell(
    cell: Cell,
    specs: list[ServerSpec],
    reps: int,
    ctx: RunContext,
    log_dir: Path,
    pin: list[str],
    progress: Progress,
) -> list[Record]:
    """All reps of one cell; returns one record per (server, rep)."""
    records: list[Record] = []

    def record(spec: ServerSpec, rep: int, result: dict) -> None:
        records.append({"cell": cell.name, "server": spec.name, "label": spec.label, "rep": rep, **result})
        progress.step(cell.name, spec.name, rep, reps, describe(result, cell))

    cell_missing = cell.missing()
    runnable = []
    for spec in specs:
        why = cell_missing or spec.missing()
        if why:
            for rep in range(1, reps + 1):
                record(spec, rep, {"error": f"skipped: {why}", "skipped": True})
        else:
            runnable.append(spec)

    if cell.fresh_server:
        for rep in range(1, reps + 1):
            for spec in runnable:
                server = start(spec, pin, log_dir, ctx.client_pin)
                if isinstance(server, str):
                    record(spec, rep, {"error": server})
                    continue
                try:
                    why = server.wait_ready()
                    record(spec, rep, {"error": why} if why else cell.measure(server, ctx))
                finally:
                    server.stop()
        return records

    procs: dict[str, ServerProcess] = {}
    failed: dict[str, str] = {}  # server name -> why it is not serving
    try:
        for spec in runnable:
            server = start(spec, pin, log_dir, ctx.client_pin)
            if isinstance(server, str):
                failed[spec.name] = server
            else:
                procs[spec.name] = server
        for name, proc in procs.items():
            why = proc.wait_ready()
            if why:
                failed[name] = why
        for rep in range(1, reps + 1):
            for spec in runnable:
                why = failed.get(spec.name) or procs[spec.name].alive()
                record(spec, rep, {"error": why} if why else cell.measure(procs[spec.name], ctx))
    finally:
        for proc in procs.values():
            proc.stop()
    return records


def start(spec: ServerSpec, pin: list[str], log_dir: Path, upstream_pin: list[str] = ()) -> ServerProcess | str:
    """Start a server process (and its upstream, pinned with `upstream_pin`), or say why it could not."""
    try:
        return ServerProcess(spec, pin, log_dir, upstream_pin)
    except OSError as exc:
        return f"cannot start {spec.argv[0]}: {exc}"


def run_matrix(
    cells: list[Cell],
    names: list[str] | None,
    reps: int,
    ctx: RunContext,
    log_dir: Path,
    pin: list[str],
    on_cell: Callable[[list[Record]], None] | None = None,
) -> list[Record]:
    """Measure every cell against its servers of the cell's kind (limited to `names`)."""
    plan = [(cell, specs_for(cell.kind, names)) for cell in cells]
    progress = Progress(sum(len(specs) * reps for _, specs in plan))
    records: list[Record] = []
    for cell, specs in plan:
        if not specs:
            continue
        records.extend(measure_cell(cell, specs, reps, ctx, log_dir, pin, progress))
        if on_cell:
            on_cell(records)
    return records
