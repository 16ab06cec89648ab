"""Turn measurement records into medians, ratios to uvloop, a Markdown report and PNG charts."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
from pathlib import Path

from bench.cells import Cell, EchoCell, IdleMemoryCell, RequestCell, RespCell, SendfileCell
from bench.servers import BASELINE, ROOT

CLIENT_BOUND = 0.95  # client CPU use over the window above which the client, not the server, limited the rate


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _rep_ratio(ok: list[dict], baseline: dict[int, dict], key: str) -> float | None:
    """Median over reps of record[key] / the baseline's record[key] in the same rep."""
    ratios = []
    for r in ok:
        base = baseline.get(r["rep"], {}).get(key)
        if base and r.get(key) is not None:
            ratios.append(r[key] / base)
    return _median(ratios)


def aggregate(records: list[dict], cells: list[Cell]) -> list[dict]:
    """One row per (cell, server): medians over the reps that worked, and the median per-rep ratio."""
    rows = []
    for cell in cells:
        recs = [r for r in records if r["cell"] == cell.name]
        baseline = {r["rep"]: r for r in recs if r["server"] == BASELINE and not r.get("error")}
        for server in dict.fromkeys(r["server"] for r in recs):
            mine = [r for r in recs if r["server"] == server]
            ok = [r for r in mine if not r.get("error")]
            errors = list(dict.fromkeys(str(r["error"]) for r in mine if r.get("error")))
            notes = []
            if errors and ok:
                notes.append(f"{len(mine) - len(ok)}/{len(mine)} reps failed: {errors[0]}")
            elif errors:
                notes.append(errors[0] if errors[0].startswith("skipped") else f"FAILED: {errors[0]}")
            util = _median([r.get("client_cpu_util") for r in ok])
            if util is not None and util >= CLIENT_BOUND:
                notes.append("client-bound (compare CPU/msg)")
            stalled = max((r.get("stalled_conns") or 0 for r in ok), default=0)
            if stalled:
                notes.append(f"{stalled} connection(s) got no reply in a window")
            rows.append(
                {
                    "cell": cell.name,
                    "title": cell.title,
                    "server": server,
                    "label": mine[0]["label"],
                    "unit": cell.unit,
                    "reps_ok": len(ok),
                    "reps": len(mine),
                    "value": _median([r["value"] for r in ok]),
                    "ratio": _rep_ratio(ok, baseline, "value"),
                    "cpu_us": _median([r.get("cpu_us") for r in ok]),
                    "cpu_ratio": _rep_ratio(ok, baseline, "cpu_us"),
                    "per_cpu_s": _median([r.get("per_cpu_s") for r in ok]),
                    "per_cpu_ratio": _rep_ratio(ok, baseline, "per_cpu_s"),
                    "busy": _median([r.get("server_busy") for r in ok]),
                    "p50": _median([r.get("p50") for r in ok]),
                    "p99": _median([r.get("p99") for r in ok]),
                    "p999": _median([r.get("p999") for r in ok]),
                    "rss_before": _median([r.get("rss_before") for r in ok]),
                    "rss_after": _median([r.get("rss_after") for r in ok]),
                    "notes": "; ".join(notes).replace("|", "/").replace("\n", " ")[:240],
                }
            )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def machine_info() -> dict[str, str]:
    """CPU model, kernel and versions, for the report header."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        redis = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        redis = next((w[2:] for w in redis.split() if w.startswith("v=")), "unknown")
    except (OSError, subprocess.SubprocessError):
        redis = "not installed"
    return {
        "CPU": f"{cpu} ({os.cpu_count()} logical CPUs)",
        "Kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "pygev": version("pygev") + (f" (git {commit})" if commit else ""),
        "uvloop": version("uvloop"),
        "websockets": version("websockets"),
        "redis-server": redis,
    }


def _load_table(rows: list[dict], what: str, per_cpu: bool = False) -> list[str]:
    """Throughput rows; with `per_cpu`, messages per server CPU-second (higher is better) and its
    ratio to uvloop come right after the rate, ahead of CPU per message."""
    unit = what.split("/")[0].rstrip("s")
    efficiency = f" {unit}s per server CPU-s | vs uvloop |" if per_cpu else ""
    lines = [
        f"| cell | server | {what} | vs uvloop |{efficiency} server CPU us/{unit} | CPU vs uvloop "
        "| server busy | p50 us | p99 us | p99.9 us | notes |",
        "|---|---|--:|--:|" + ("--:|--:|" if per_cpu else "") + "--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in rows:
        efficiency = (
            f" {_fmt(row['per_cpu_s'], ',.0f')} | {_ratio(row['per_cpu_ratio'])} |" if per_cpu else ""
        )
        lines.append(
            f"| {row['cell']} | {row['label']} | {_fmt(row['value'], ',.0f')} | {_ratio(row['ratio'])} "
            f"|{efficiency} {_fmt(row['cpu_us'], '.2f')} | {_ratio(row['cpu_ratio'])} "
            f"| {_fmt(row['busy'], '.0%')} | {_fmt(row['p50'], ',.0f')} | {_fmt(row['p99'], ',.0f')} "
            f"| {_fmt(row['p999'], ',.0f')} | {row['notes']} |"
        )
    return lines


def _memory_table(rows: list[dict]) -> list[str]:
    lines = [
        "| server | bytes per idle connection | vs uvloop | RSS before | RSS after | notes |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for row in rows:
        mib = lambda v: "-" if v is None else f"{v / 1048576:.1f} MiB"  # noqa: E731
        lines.append(
            f"| {row['label']} | {_fmt(row['value'], ',.0f')} | {_ratio(row['ratio'])} "
            f"| {mib(row['rss_before'])} | {mib(row['rss_after'])} | {row['notes']} |"
        )
    return lines


def markdown(rows: list[dict], cells: list[Cell], settings: dict, command: str, charts: list[str]) -> str:
    """The whole RESULTS.md text."""
    by_type = {
        "request": [r for r in rows if isinstance(_cell(cells, r), RequestCell)],
        "echo": [r for r in rows if isinstance(_cell(cells, r), EchoCell)],
        "resp": [r for r in rows if isinstance(_cell(cells, r), RespCell)],
        "memory": [r for r in rows if isinstance(_cell(cells, r), IdleMemoryCell)],
        "sendfile": [r for r in rows if isinstance(_cell(cells, r), SendfileCell)],
    }
    out = [
        "# pygev benchmark results",
        "",
        f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by:",
        "",
        f"    {command}",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine_info().items()],
        f"- Server pinned to CPU {settings['server_cpu']}, client to CPU {settings['client_cpu']}"
        + ("" if settings["pinned"] else " (NOT pinned: taskset missing or fewer than 2 CPUs)"),
        f"- {settings['reps']} reps per cell, servers interleaved (A B C A B C ...), medians;"
        f" {settings['duration']} s measured after {settings['warmup']} s warm-up per run",
        "",
        "How to read: *vs uvloop* is the median over reps of the server's rate divided by the uvloop"
        " baseline's rate in the same rep (get and rpc cells: the uvloop Protocol peer of the same"
        " service; raw cells: uvloop Protocol raw echo; framed: the uvloop framed-echo peer; ws: the"
        " websockets library on uvloop; resp: the uvloop RESP peer; memory: lower is better)."
        " *Server CPU per message* is the server's utime+stime over the measurement window divided by"
        " the messages in it (10 ms clock ticks), which still compares servers when the client is the"
        " bottleneck (*msgs per server CPU-s* is its inverse, and its ratio is taken the same way);"
        " *server busy* is that CPU time over the window (below ~90%: the server was not"
        " the limit - the client or other load on the machine was)."
        " Latencies are the load generator's round trips (p99.9 is not reported by redis-benchmark).",
        "",
    ]
    if by_type["request"]:
        out += [
            "## Request / computed reply: line GET and length-framed RPC (bench/loadgen.c)",
            "",
            "The handler computes every reply from its request, as users' handlers do: `get` is"
            " examples/line_get.py (`GET keyNNNN` lines, LineProtocol, a dict lookup per request),"
            " `rpc` is examples/rpc.py (LengthFieldProtocol, 8-byte request, 36-byte reply built with"
            " `struct`); the asyncio and uvloop peers (bench/peers/line_get_server.py, rpc_server.py)"
            " split each read with CPython's C primitives and answer it in one write.",
            "",
            *_load_table(by_type["request"], "msgs/s", per_cpu=True),
            "",
        ]
        out += [
            "Cells: " + "; ".join(f"`{c.name}` {c.title}" for c in cells if isinstance(c, RequestCell)),
            "",
        ]
    if by_type["echo"]:
        out += [
            "## Echo shortcut: raw, framed and WebSocket echo (bench/loadgen.c)",
            "",
            "The reply is the message that was read: for raw and framed echo pygev sends the input"
            " view back without touching it, so these cells measure the I/O path more than a"
            " handler's work.",
            "",
            *_load_table(by_type["echo"], "msgs/s"),
            "",
        ]
        out += ["Cells: " + "; ".join(f"`{c.name}` {c.title}" for c in cells if isinstance(c, EchoCell)), ""]
    if by_type["resp"]:
        out += ["## RESP (redis-benchmark, 50 clients)", "", *_load_table(by_type["resp"], "req/s"), ""]
    if by_type["sendfile"]:
        out += [
            "## Sendfile: a 64 MiB file to one client (bench/sendfile_client.py)",
            "",
            "MB/s over 32 transfers (2 GiB) on one connection; server CPU us per MB sent (MB per server CPU-s"
            " is its inverse).  uvloop has no loop.sendfile: its peer reads and writes chunks.",
            "",
            *_load_table(by_type["sendfile"], "MB/s", per_cpu=True),
            "",
        ]
    if by_type["memory"]:
        out += [
            f"## Memory: server RSS per idle connection ({settings['memory_conns']:,} connections)",
            "",
            *_memory_table(by_type["memory"]),
            "",
        ]
    if charts:
        out += ["## Charts", "", *[f"![{Path(c).stem}]({c})" for c in charts], ""]
    return "\n".join(out)


def _cell(cells: list[Cell], row: dict) -> Cell:
    return next(c for c in cells if c.name == row["cell"])


def charts(rows: list[dict], cells: list[Cell], out_dir: Path) -> list[Path]:
    """PNG charts (matplotlib, Agg): throughput and CPU per message relative to uvloop, idle memory."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    load = [r for r in rows if not isinstance(_cell(cells, r), IdleMemoryCell) and r["value"] is not None]
    servers = list(dict.fromkeys(r["server"] for r in load))
    cell_names = list(dict.fromkeys(r["cell"] for r in load))
    for key, title, filename in (
        ("ratio", "throughput relative to uvloop (same rep, median; higher is better)", "ratio.png"),
        ("cpu_ratio", "server CPU per message relative to uvloop (lower is better)", "cpu.png"),
    ):
        if all(r[key] is None for r in load):
            continue  # nothing to compare with (the baseline did not run)
        fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(cell_names)), 4.5))
        width = 0.8 / max(1, len(servers))
        for i, server in enumerate(servers):
            values = []
            for name in cell_names:
                row = next((r for r in load if r["cell"] == name and r["server"] == server), None)
                values.append(row[key] if row and row[key] is not None else 0)
            ax.bar([x + i * width for x in range(len(cell_names))], values, width, label=server)
        ax.set_xticks([x + width * (len(servers) - 1) / 2 for x in range(len(cell_names))])
        ax.set_xticklabels(cell_names, rotation=30, ha="right", fontsize=8)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    memory = [r for r in rows if isinstance(_cell(cells, r), IdleMemoryCell) and r["value"] is not None]
    if memory:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar([r["server"] for r in memory], [r["value"] for r in memory])
        ax.set_ylabel("bytes per idle connection")
        ax.set_title("server RSS per idle connection (lower is better)")
        fig.tight_layout()
        path = out_dir / "memory.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
