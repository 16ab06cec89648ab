"""The benchmark cells: which load, against which kind of server, and how one measurement runs.

Every `measure` returns a dict with "error" (None when fine) and, on success, "value" (the number the
ratio to uvloop is taken on: msgs/s, or bytes per idle connection for the memory cell) plus whatever
else the report shows (cpu_us per message, per_cpu_s messages per server CPU-second, latency
percentiles in microseconds).

The request / computed-reply cells (get, rpc) come first: a handler that builds each reply is what
users write; the echo cells, where the reply is the very bytes that were read, are a shortcut.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen
from bench.procstat import cpu_seconds
from bench.servers import ROOT, ServerProcess


@dataclass
class RunContext:
    """Settings shared by every measurement of one harness run."""

    loadgen: Path | None
    client_pin: list[str]
    duration: float
    warmup: float
    memory_conns: int
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    name: str
    kind: str  # the server kind it runs against: get, rpc, raw, framed, ws, resp
    title: str
    higher_is_better = True
    fresh_server = False  # start a new server process for every measurement
    unit = "msgs/s"

    def missing(self) -> str | None:
        """Why this cell cannot run here (a missing client tool), or None."""
        return None

    def measure(self, server: ServerProcess, ctx: RunContext) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class LoadgenCell(Cell):
    """bench/loadgen.c in `mode` against a server of the cell's kind."""

    mode: str = "raw"
    conns: int = 50
    size: int = 64
    pipeline: int = 1

    def measure(self, server: ServerProcess, ctx: RunContext) -> dict:
        if ctx.loadgen is None:
            return {"error": "loadgen could not be built"}
        out = loadgen.run(
            ctx.loadgen,
            port=server.port,
            mode=self.mode,
            conns=self.conns,
            size=self.size,
            pipeline=self.pipeline,
            duration=ctx.duration,
            warmup=ctx.warmup,
            server_pid=server.pid,
            pin=ctx.client_pin,
        )
        if out.get("error"):
            return {"error": out["error"], "raw": out}
        lat = out["lat_us"]
        return {
            "error": None,
            "value": out["msgs_per_s"],
            "mb_per_s": out["mb_per_s"],
            "cpu_us": out["server_cpu_us_per_msg"],
            "per_cpu_s": out["msgs"] / out["server_cpu_s"] if out["server_cpu_s"] else None,
            "p50": lat["p50"],
            "p99": lat["p99"],
            "p999": lat["p999"],
            "client_cpu_util": out["client_cpu_s"] / out["window_s"] if out["window_s"] else None,
            "server_busy": (
                out["server_cpu_s"] / out["window_s"]
                if out["window_s"] and out["server_cpu_s"] is not None
                else None
            ),
            "stalled_conns": out["stalled_conns"],
            "lost": out.get("lost"),
            "raw": out,
        }


@dataclass(frozen=True)
class RequestCell(LoadgenCell):
    """Request / computed reply: the handler builds each reply from its request (get, rpc modes)."""


@dataclass(frozen=True)
class EchoCell(LoadgenCell):
    """The echo shortcut: the reply is the very bytes that were read (raw, framed or WebSocket)."""


@dataclass(frozen=True)
class RespCell(Cell):
    """redis-benchmark, one test at a time, 50 clients, the given pipeline depth."""

    test: str = "set"
    pipeline: int = 1
    clients: int = 50

    def missing(self) -> str | None:
        if shutil.which("redis-benchmark") is None:
            return "redis-benchmark is not installed (Debian package redis-tools)"
        return None

    def requests(self, duration: float) -> int:
        """Request count giving roughly `duration` seconds on a fast server (redis-benchmark has no -d)."""
        per_second = 60_000 if self.pipeline == 1 else 400_000
        return max(10_000, int(per_second * duration))

    def measure(self, server: ServerProcess, ctx: RunContext) -> dict:
        n = self.requests(ctx.duration)
        argv = [
            *ctx.client_pin,
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-c",
            str(self.clients),
            "-P",
            str(self.pipeline),
            "-n",
            str(n),
            "-t",
            self.test,
            "--csv",
        ]
        limit = 30.0 + 10 * ctx.duration
        cpu0 = cpu_seconds(server.pid)
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {"error": f"redis-benchmark did not finish {n} requests within {limit:.0f} s"}
        cpu1 = cpu_seconds(server.pid)
        elapsed = time.monotonic() - started
        rows = [row for row in csv.reader(io.StringIO(proc.stdout)) if row and row[0] == self.test.upper()]
        if proc.returncode != 0 or not rows:
            detail = (proc.stderr.strip() or proc.stdout.strip())[-300:]
            return {"error": f"redis-benchmark exited {proc.returncode}: {detail}"}
        header = next(csv.reader(io.StringIO(proc.stdout)))
        row = dict(zip(header, rows[0]))
        rps = float(row["rps"])
        cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
        return {
            "error": None,
            "value": rps,
            "cpu_us": cpu * 1e6 / n if cpu is not None else None,
            "server_busy": cpu / elapsed if cpu is not None else None,
            "p50": float(row["p50_latency_ms"]) * 1000,
            "p99": float(row["p99_latency_ms"]) * 1000,
            "p999": None,
        }


@dataclass(frozen=True)
class IdleMemoryCell(Cell):
    """Server RSS growth per idle connection (bench/idle_rss.py as the client), fresh server each time."""

    fresh_server = True
    higher_is_better = False
    unit = "bytes/conn"

    def measure(self, server: ServerProcess, ctx: RunContext) -> dict:
        argv = [
            *ctx.client_pin,
            sys.executable,
            "-m",
            "bench.idle_rss",
            "--port",
            str(server.port),
            "--pid",
            str(server.pid),
            "--conns",
            str(ctx.memory_conns),
        ]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"error": "idle_rss did not finish within 120 s"}
        try:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            return {"error": f"idle_rss exited {proc.returncode}: {proc.stderr.strip()[-300:]}"}
        if out.get("error"):
            return {"error": out["error"]}
        return {
            "error": None,
            "value": out["bytes_per_conn"],
            "rss_before": out["rss_before"],
            "rss_after": out["rss_after"],
            "conns": out["conns"],
        }


@dataclass(frozen=True)
class SendfileCell(Cell):
    """A 64 MiB file to one client (bench/sendfile_client.py reads and discards it), `transfers` times."""

    unit = "MB/s"
    transfers: int = 32
    size: int = 64 << 20

    def measure(self, server: ServerProcess, ctx: RunContext) -> dict:
        argv = [*ctx.client_pin, sys.executable, "-m", "bench.sendfile_client", "--port", str(server.port),
                "--pid", str(server.pid), "--transfers", str(self.transfers), "--size", str(self.size)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"error": "sendfile_client did not finish within 120 s"}
        try:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            return {"error": f"sendfile_client exited {proc.returncode}: {proc.stderr.strip()[-300:]}"}
        if out.get("error"):
            return {"error": out["error"]}
        cpu = out["server_cpu_s"]
        mb = out["bytes"] / 1e6
        return {
            "error": None,
            "value": out["mb_per_s"],
            "cpu_us": cpu * 1e6 / mb if cpu is not None else None,
            "per_cpu_s": mb / cpu if cpu else None,
            "server_cpu_s": cpu,
            "server_busy": cpu / out["seconds"] if cpu is not None else None,
            "p50": None,
            "p99": None,
            "p999": None,
        }


def _resp_cells() -> list[Cell]:
    cells: list[Cell] = []
    for pipeline in (1, 16):
        for test in ("ping_inline", "ping_mbulk", "set", "get"):
            cells.append(
                RespCell(
                    f"resp-{test}-p{pipeline}",
                    "resp",
                    f"redis-benchmark -t {test} -P {pipeline}, 50 clients",
                    test=test,
                    pipeline=pipeline,
                )
            )
    return cells


def _request_cells() -> list[Cell]:
    """The line GET and length-framed RPC services at three loads each; these lead the report."""
    services = (
        ("get", "line GET (12 B request, 37 B value + newline)"),
        ("rpc", "length-framed RPC (8 B request, 36 B computed reply)"),
    )
    loads = ((50, 16), (50, 1), (1000, 4))
    cells: list[Cell] = []
    for mode, what in services:
        for conns, pipeline in loads:
            depth = f", {pipeline} pipelined" if pipeline > 1 else ""
            cells.append(
                RequestCell(
                    f"{mode}{conns}" + (f"p{pipeline}" if pipeline > 1 else ""),
                    mode,
                    f"{what}, {conns} connections{depth}",
                    mode=mode,
                    conns=conns,
                    pipeline=pipeline,
                )
            )
    return cells


def _awaiting_cells() -> list[Cell]:
    """The line GET service whose handler awaits a 1 ms asyncio lookup (examples/async_kv.py)."""
    return [
        RequestCell(
            f"asyncget{conns}p{pipeline}",
            "asyncget",
            f"line GET awaiting a 1 ms asyncio store, {conns} connections, {pipeline} pipelined",
            mode="get",
            conns=conns,
            pipeline=pipeline,
        )
        for conns, pipeline in ((50, 16), (1000, 4))
    ]


CELLS: list[Cell] = [
    *_request_cells(),
    *_awaiting_cells(),
    EchoCell("raw64x1", "raw", "echo shortcut: raw 64 B, 1 connection", conns=1),
    EchoCell("raw64x50", "raw", "echo shortcut: raw 64 B, 50 connections"),
    EchoCell("raw64x1000", "raw", "echo shortcut: raw 64 B, 1000 connections", conns=1000),
    EchoCell("raw64x10000", "raw", "echo shortcut: raw 64 B, 10000 connections", conns=10000),
    EchoCell("raw1kx50", "raw", "echo shortcut: raw 1 KiB, 50 connections", size=1024),
    EchoCell("raw16kx50", "raw", "echo shortcut: raw 16 KiB, 50 connections", size=16384),
    EchoCell("raw64x50p16", "raw", "echo shortcut: raw 64 B, 50 connections, 16 pipelined", pipeline=16),
    EchoCell(
        "framed64x50p16",
        "framed",
        "echo shortcut: framed 64 B, 50 connections, 16 pipelined",
        mode="framed",
        pipeline=16,
    ),
    EchoCell(
        "framed1kx50", "framed", "echo shortcut: framed 1 KiB, 50 connections", mode="framed", size=1024
    ),
    EchoCell("ws256x50", "ws", "echo shortcut: WebSocket 256 B binary, 50 connections", mode="ws", size=256),
    EchoCell("proxy64x50", "proxy", "TCP proxy in front of an echo server: raw 64 B, 50 connections"),
    EchoCell("proxy16kx50", "proxy", "TCP proxy in front of an echo server: raw 16 KiB, 50 connections",
             size=16384),
    EchoCell("udp-echo", "udp", "UDP echo 64 B datagrams, 50 sockets", mode="udp"),
    EchoCell("udp-echo-p16", "udp", "UDP echo 64 B datagrams, 50 sockets, 16 in flight each", mode="udp",
             pipeline=16),
    SendfileCell("sendfile-64m", "sendfile", "a 64 MiB file to one client, 32 transfers (MB/s)"),
    IdleMemoryCell("mem-idle", "raw", "server RSS per idle connection"),
    *_resp_cells(),
]

GROUPS = {
    "request": [c.name for c in CELLS if isinstance(c, RequestCell) and c.kind != "asyncget"],
    "asyncget": [c.name for c in CELLS if isinstance(c, RequestCell) and c.kind == "asyncget"],
    "get": [c.name for c in CELLS if isinstance(c, RequestCell) and c.kind == "get"],
    "rpc": [c.name for c in CELLS if isinstance(c, RequestCell) and c.mode == "rpc"],
    "echo": [c.name for c in CELLS if isinstance(c, EchoCell) and c.kind != "proxy"],
    "raw": [c.name for c in CELLS if isinstance(c, EchoCell) and c.kind == "raw"],
    "framed": [c.name for c in CELLS if isinstance(c, EchoCell) and c.mode == "framed"],
    "ws": [c.name for c in CELLS if isinstance(c, EchoCell) and c.mode == "ws"],
    "proxy": [c.name for c in CELLS if c.kind == "proxy"],
    "udp": [c.name for c in CELLS if isinstance(c, LoadgenCell) and c.mode == "udp"],
    "memory": [c.name for c in CELLS if isinstance(c, IdleMemoryCell)],
    "sendfile": [c.name for c in CELLS if isinstance(c, SendfileCell)],
    "resp": [c.name for c in CELLS if isinstance(c, RespCell)],
    "all": [c.name for c in CELLS],
}


def select(spec: str) -> list[Cell]:
    """Cells named by a comma-separated list of names, group names (see GROUPS) or glob patterns."""
    wanted: list[str] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        names = GROUPS.get(item) or fnmatch.filter([c.name for c in CELLS], item)
        if not names:
            raise ValueError(f"no cell matches {item!r}; cells: {', '.join(c.name for c in CELLS)}")
        wanted.extend(n for n in names if n not in wanted)
    return [c for c in CELLS if c.name in wanted]
