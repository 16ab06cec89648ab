"""Soak test: mixed loopback traffic against pygev's example servers while watching their memory.

    python -m bench.soak [--duration 60] [--workers 1] [--seed 1]

Starts `examples/echo.py` (raw echo) and `examples/protocol.py` (4-byte big-endian length-framed
echo) as subprocesses on 127.0.0.1 and drives, for `--duration` seconds in total: echo round trips
of random sizes, batches of frames, idle connections, abrupt resets (RST, some mid-message),
slow readers (large replies read a little at a time, which exercises backpressure) and plain
connect/close churn.  After a warm-up (`--warmup`, default 20% of the duration) the traffic pauses,
the servers settle, and their RSS and open fd counts (summed over worker processes) are the
baseline; at the end the same is measured again.  Exit status 1 when either grew by more than
`--max-growth` (10%), when a round trip returned wrong bytes, a healthy connection failed, or a
server died; 0 otherwise.  A figures summary goes to stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SETTLE_TIMEOUT = 10.0  # seconds the servers get to release closed connections after a phase


# ---------------------------------------------------------------------------- server processes
def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the server binds it right after)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """`pid` and its direct children (the worker processes of a pre-fork server)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(entry))
    return pids


def sample(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open fds) summed over the server process and its workers."""
    rss = fds = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass  # a process that just exited
    return rss, fds


@dataclass
class ServerProc:
    """One example server running in a subprocess on a loopback port."""

    name: str
    command: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    def start(self) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the server's life
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.output()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within 15 s:\n{self.output()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read()[-4000:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


# ---------------------------------------------------------------------------- traffic
@dataclass
class Figures:
    """What the traffic did: counts per kind, and failures that should not happen."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    first_failures: list[str] = field(default_factory=list)

    def fail(self, kind: str, exc: BaseException | str) -> None:
        self.failures[kind] += 1
        if len(self.first_failures) < 10:
            self.first_failures.append(f"{kind}: {exc!r}")


def _hard_close(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0), as a crashed or impatient peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 5)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


class Traffic:
    """The mixed client workload, on one asyncio loop, until `stop` is set."""

    def __init__(self, echo_port: int, framed_port: int, figures: Figures, rng: random.Random, scale: int):
        self.echo_port, self.framed_port = echo_port, framed_port
        self.fig, self.rng, self.scale = figures, rng, scale
        self.stop = asyncio.Event()

    async def run(self, seconds: float) -> None:
        s = self.scale
        jobs = (
            [self.echo() for _ in range(4 * s)]
            + [self.framed() for _ in range(4 * s)]
            + [self.idle(port) for port in (self.echo_port, self.framed_port) for _ in range(16 * s)]
            + [self.resets(port) for port in (self.echo_port, self.framed_port)]
            + [self.slow_reader(self.echo_port, framed=False)]
            + [self.slow_reader(self.framed_port, framed=True)]
            + [self.churn(port) for port in (self.echo_port, self.framed_port)]
        )
        tasks = [asyncio.ensure_future(job) for job in jobs]
        await asyncio.sleep(seconds)
        self.stop.set()
        done, pending = await asyncio.wait(tasks, timeout=15)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            error = task.exception()
            if error is not None:
                self.fig.fail("client", error)

    async def _loop(self, kind: str, one_session) -> None:
        """Run sessions until stop; a failure is counted and the next session starts afresh."""
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(one_session(), 30)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, AssertionError) as exc:
                self.fig.fail(kind, exc)
                await asyncio.sleep(0.1)

    async def echo(self) -> None:
        async def session() -> None:
            reader, writer = await asyncio.open_connection(HOST, self.echo_port)
            try:
                for _ in range(self.rng.randint(1, 200)):
                    if self.stop.is_set():
                        break
                    size = self.rng.choice((1, 64, 512, 4096, 16384, 65536, 200_000))
                    payload = self.rng.randbytes(size)
                    writer.write(payload)
                    got = await reader.readexactly(size)
                    assert got == payload, "echo returned different bytes"
                    self.fig.counts["echo messages"] += 1
                    self.fig.counts["echo bytes"] += size
            finally:
                await _close(writer)

        await self._loop("echo", session)

    async def framed(self) -> None:
        async def session() -> None:
            reader, writer = await asyncio.open_connection(HOST, self.framed_port)
            try:
                for _ in range(self.rng.randint(1, 200)):
                    if self.stop.is_set():
                        break
                    frames = [self.rng.randbytes(self.rng.choice((0, 1, 60, 1000, 9000))) for _ in
                              range(self.rng.randint(1, 16))]
                    wire = b"".join(_frame(f) for f in frames)
                    cut = self.rng.randint(0, len(wire))  # split the batch at a random byte
                    writer.write(wire[:cut])
                    await writer.drain()
                    writer.write(wire[cut:])
                    got = await reader.readexactly(len(wire))
                    assert got == wire, "framed echo returned different bytes"
                    self.fig.counts["frames"] += len(frames)
            finally:
                await _close(writer)

        await self._loop("framed", session)

    async def idle(self, port: int) -> None:
        async def session() -> None:
            _, writer = await asyncio.open_connection(HOST, port)
            try:
                self.fig.counts["idle connections"] += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.rng.uniform(0.5, 5.0))
            finally:
                await _close(writer)

        await self._loop("idle", session)

    async def resets(self, port: int) -> None:
        """Connect, send some (maybe a partial frame), then reset - sometimes before reading."""

        async def session() -> None:
            reader, writer = await asyncio.open_connection(HOST, port)
            size = self.rng.choice((0, 10, 3000, 100_000, 1_000_000))
            data = self.rng.randbytes(size)
            if port == self.framed_port and size:
                data = _frame(data)[: self.rng.randint(1, size + 4)]
            writer.write(data)
            if self.rng.random() < 0.5:
                with contextlib.suppress(asyncio.TimeoutError, OSError, asyncio.IncompleteReadError):
                    await asyncio.wait_for(reader.read(4096), 0.05)
            _hard_close(writer)
            self.fig.counts["resets"] += 1
            await asyncio.sleep(0.005)

        await self._loop("resets (unexpected error)", session)

    async def slow_reader(self, port: int, *, framed: bool) -> None:
        """Send a lot, then read the reply in small sips: the server must queue, not drop."""

        async def session() -> None:
            # A small receive buffer, set before connecting so the TCP window is sane.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
            except OSError:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                chunks = [self.rng.randbytes(1 << 20) for _ in range(8)]
                wire = b"".join(_frame(c) if framed else c for c in chunks)
                writer.write(wire)
                got = bytearray()
                while len(got) < len(wire):
                    piece = await reader.read(min(16384, len(wire) - len(got)))
                    if not piece:
                        raise asyncio.IncompleteReadError(bytes(got), len(wire))
                    got += piece
                    await asyncio.sleep(0.001)
                    if self.stop.is_set():
                        return
                assert got == wire, "slow reader got different bytes"
                self.fig.counts["slow-reader bytes"] += len(wire)
            finally:
                await _close(writer)

        await self._loop("slow reader", session)

    async def churn(self, port: int) -> None:
        async def session() -> None:
            for _ in range(50):
                _, writer = await asyncio.open_connection(HOST, port)
                await _close(writer)
                self.fig.counts["connect/close"] += 1
            await asyncio.sleep(0.01)

        await self._loop("churn", session)


# ---------------------------------------------------------------------------- measuring
def settle(servers: list[ServerProc]) -> dict[str, tuple[int, int]]:
    """Wait (bounded) until each server's fd count stops falling, then sample (RSS KiB, fds)."""
    result = {}
    for server in servers:
        assert server.proc is not None
        deadline = time.monotonic() + SETTLE_TIMEOUT
        last = sample(server.proc.pid)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = sample(server.proc.pid)
            if now[1] >= last[1]:
                last = now
                break
            last = now
        result[server.name] = last
    return result


def growth(before: int, after: int) -> float:
    return (after - before) / before if before else 0.0


async def traffic_phase(
    servers: list[ServerProc], seconds: float, figures: Figures, rng: random.Random, scale: int, peaks: dict
) -> None:
    """Run the traffic for `seconds` while sampling the servers once a second (peaks)."""
    traffic = Traffic(servers[0].port, servers[1].port, figures, rng, scale)

    async def watch() -> None:
        while not traffic.stop.is_set():
            for server in servers:
                assert server.proc is not None
                rss, fds = sample(server.proc.pid)
                peak = peaks.setdefault(server.name, [0, 0])
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], fds)
            await asyncio.sleep(1.0)

    watcher = asyncio.ensure_future(watch())
    await traffic.run(seconds)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of traffic in total (default 60)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the baseline (default 20%%)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes per server (default 1)")
    ap.add_argument("--scale", type=int, default=1, help="multiplies the number of client connections")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS / fd growth (default 0.10)")
    ap.add_argument("--echo-cmd", help="override the echo server command; {port} is replaced")
    ap.add_argument("--framed-cmd", help="override the framed server command; {port} is replaced")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else args.duration * 0.2
    if not 0 < warmup < args.duration:
        ap.error("--warmup must be between 0 and --duration")

    def command(override: str | None, script: str, port: int) -> list[str]:
        if override:
            return shlex.split(override.replace("{port}", str(port)))
        cmd = [sys.executable, str(REPO / "examples" / script), "--port", str(port)]
        return cmd + (["--workers", str(args.workers)] if args.workers > 1 else [])

    rng = random.Random(args.seed)
    figures = Figures()
    peaks: dict[str, list[int]] = {}
    servers = []
    kinds = (("echo", args.echo_cmd, "echo.py"), ("framed", args.framed_cmd, "protocol.py"))
    for name, override, script in kinds:
        port = free_port()
        servers.append(ServerProc(name, command(override, script, port), port))
    started = time.monotonic()
    try:
        for server in servers:
            server.start()
        print(f"soak: {args.duration:.0f} s ({warmup:.0f} s warm-up), workers={args.workers}, "
              f"scale={args.scale}, servers on {HOST}:{servers[0].port} / {servers[1].port}", file=sys.stderr)
        asyncio.run(traffic_phase(servers, warmup, figures, rng, args.scale, peaks))
        baseline = settle(servers)
        asyncio.run(traffic_phase(servers, args.duration - warmup, figures, rng, args.scale, peaks))
        final = settle(servers)
        died = [s.name for s in servers if not s.alive()]
    finally:
        outputs = {s.name: s.output() for s in servers}
        for server in servers:
            server.stop()

    ok = not died and not figures.failures
    print(f"\nsoak figures ({time.monotonic() - started:.1f} s wall, seed {args.seed})")
    for key, value in sorted(figures.counts.items()):
        print(f"  {key:<22} {value:>14,}")
    print(f"\n  {'server':<8} {'RSS KiB base':>13} {'final':>9} {'peak':>9} {'growth':>8}"
          f" {'fds base':>9} {'final':>6} {'peak':>6} {'growth':>8}")
    for server in servers:
        (rss0, fd0), (rss1, fd1) = baseline[server.name], final[server.name]
        peak_rss, peak_fd = peaks.get(server.name, (0, 0))
        g_rss, g_fd = growth(rss0, rss1), growth(fd0, fd1)
        flag = ""
        if g_rss > args.max_growth or g_fd > args.max_growth:
            ok, flag = False, "  <-- grew"
        print(f"  {server.name:<8} {rss0:>13,} {rss1:>9,} {peak_rss:>9,} {g_rss:>+8.1%}"
              f" {fd0:>9} {fd1:>6} {peak_fd:>6} {g_fd:>+8.1%}{flag}")
    if figures.failures:
        print("\n  failures: " + ", ".join(f"{k}={v}" for k, v in sorted(figures.failures.items())))
        for line in figures.first_failures:
            print(f"    {line}")
    for name in died:
        print(f"\n  server {name} died:\n{outputs[name]}")
    print(f"\nsoak {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
