"""Build bench/loadgen.c on demand (cc -O2, cached by source hash) and run it, parsing its JSON."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("loadgen.c")


def cache_dir() -> Path:
    """Where built binaries live: $PYGEV_BENCH_CACHE, else ~/.cache/pygev-bench (never committed)."""
    base = os.environ.get("PYGEV_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pygev-bench"
    )
    return Path(base)


def build() -> Path:
    """Return the path of a loadgen binary for the current source, compiling it if needed."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    binary = cache_dir() / f"loadgen-{digest}"
    if binary.exists():
        return binary
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler found (install gcc, or set CC) - needed to build bench/loadgen.c")
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(tmp), str(SOURCE)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {SOURCE} failed:\n{proc.stderr}")
    tmp.replace(binary)
    return binary


def run(
    binary: Path,
    *,
    port: int,
    mode: str,
    conns: int,
    size: int,
    pipeline: int,
    duration: float,
    warmup: float,
    server_pid: int,
    pin: list[str],
    connect_timeout: float = 10.0,
) -> dict:
    """Run one measurement against 127.0.0.1:port; returns loadgen's JSON (with "error" on failure)."""
    argv = [
        *pin,
        str(binary),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--mode",
        mode,
        "--conns",
        str(conns),
        "--size",
        str(size),
        "--pipeline",
        str(pipeline),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--server-pid",
        str(server_pid),
        "--connect-timeout",
        str(connect_timeout),
    ]
    limit = connect_timeout + warmup + duration + 15.0
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"loadgen did not finish within {limit:.0f} s"}
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": f"loadgen exited {proc.returncode} without a result: {proc.stderr.strip()[-300:]}"}
    if proc.returncode != 0 and not result.get("error"):
        result["error"] = f"loadgen exited {proc.returncode}"
    return result
