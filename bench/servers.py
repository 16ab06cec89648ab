"""The servers under test: a registry of command lines per workload kind, and a process wrapper.

Kinds: "get" (the line GET service of examples/line_get.py), "rpc" (the length-framed RPC service of
examples/rpc.py), "raw" (echo), "framed" (4-byte big-endian length-framed echo), "ws" (WebSocket echo),
"resp" (Redis protocol) and "proxy" (a TCP proxy in front of an upstream echo server: the upstream,
the same uvloop echo for every proxy, runs in its own process pinned to the client's CPU).  Every kind has a "uvloop" entry: the baseline its ratios are taken against.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
BASELINE = "uvloop"
PY = sys.executable


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server of one kind.  `argv` may hold "{port}"."""

    name: str
    kind: str
    label: str
    argv: tuple[str, ...]
    modules: tuple[str, ...] = ()  # Python modules it imports (checked before starting)
    hint: str = ""  # where a missing program comes from
    upstream: tuple[str, ...] = ()  # a server this one forwards to ("{upstream}" in argv is its port)
    udp: bool = False  # serves UDP on the port (readiness is an echoed datagram, not a TCP connect)
    env: tuple[tuple[str, str], ...] = ()  # extra environment (pygev-uring: PYGEV_BACKEND)

    def missing(self) -> str | None:
        """Why this server cannot start here (a missing file, program or module), or None."""
        prog = self.argv[0]
        if prog == PY:
            script = Path(self.argv[1])
            if not script.exists():
                return f"{script.relative_to(ROOT)} does not exist"
        elif shutil.which(prog) is None:
            return f"{prog} is not installed" + (f" ({self.hint})" if self.hint else "")
        for module in self.modules:
            if importlib.util.find_spec(module) is None:
                return f"Python module {module} is not installed"
        return None

    def command(self, port: int, upstream: int = 0) -> list[str]:
        return [arg.replace("{port}", str(port)).replace("{upstream}", str(upstream)) for arg in self.argv]


def _py(script: Path, *args: str) -> tuple[str, ...]:
    return (PY, str(script), "--port", "{port}", *args)


LOOPS = ("asyncio", "uvloop")


def _peer(loop: str, kind: str, label: str, script: Path, *extra: str, suffix: str = "") -> ServerSpec:
    """A peer script on `loop`, named after the loop (+ suffix), labelled "<loop> <label>"."""
    modules = ("uvloop",) if loop == "uvloop" else ()
    return ServerSpec(loop + suffix, kind, f"{loop} {label}", _py(script, "--loop", loop, *extra), modules)


UPSTREAM_ECHO = _py(PEERS / "protocol_echo.py", "--loop", "uvloop")


def _proxies() -> list[ServerSpec]:
    up = ("--upstream", "127.0.0.1:{upstream}")
    specs = [ServerSpec("pygev", "proxy", "pygev examples/proxy.py", _py(ROOT / "examples" / "proxy.py", *up),
                        ("uvloop",), upstream=UPSTREAM_ECHO)]
    for loop in LOOPS:
        specs.append(ServerSpec(loop, "proxy", f"{loop} Protocol proxy",
                                _py(PEERS / "proxy.py", "--loop", loop, *up), ("uvloop",), upstream=UPSTREAM_ECHO))
    return specs


def _peer_pairs() -> list[ServerSpec]:
    specs = []
    for kind, extra in (("raw", ()), ("framed", ("--framed",))):
        for loop in LOOPS:
            specs.append(_peer(loop, kind, "Protocol", PEERS / "protocol_echo.py", *extra))
            specs.append(
                _peer(loop, kind, "BufferedProtocol", PEERS / "buffered_echo.py", *extra, suffix="-buffered")
            )
    return specs


SERVERS: list[ServerSpec] = [
    ServerSpec("pygev", "get", "pygev examples/line_get.py", _py(ROOT / "examples" / "line_get.py")),
    *(_peer(loop, "get", "Protocol", PEERS / "line_get_server.py") for loop in LOOPS),
    ServerSpec("pygev", "rpc", "pygev examples/rpc.py", _py(ROOT / "examples" / "rpc.py")),
    *(_peer(loop, "rpc", "Protocol", PEERS / "rpc_server.py") for loop in LOOPS),
    ServerSpec("pygev", "asyncget", "pygev examples/async_kv.py", _py(ROOT / "examples" / "async_kv.py")),
    *(_peer(loop, "asyncget", "Protocol + tasks", PEERS / "async_kv_server.py") for loop in LOOPS),
    ServerSpec("pygev", "raw", "pygev examples/echo.py", _py(ROOT / "examples" / "echo.py")),
    ServerSpec("pygev", "framed", "pygev examples/protocol.py", _py(ROOT / "examples" / "protocol.py")),
    ServerSpec(
        "pygev",
        "ws",
        "pygev examples/websocket_echo.py",
        _py(ROOT / "examples" / "websocket_echo.py"),
        ("wsproto",),
    ),
    ServerSpec("pygev", "resp", "pygev examples/resp.py", _py(ROOT / "examples" / "resp.py")),
    # the same server parsing each read's commands as one message (the hand-batched shortcut)
    ServerSpec("pygev-batch", "resp", "pygev examples/resp.py --batch",
               _py(ROOT / "examples" / "resp.py", "--batch")),
    *_peer_pairs(),
    *_proxies(),
    ServerSpec("pygev", "udp", "pygev examples/udp_echo.py", _py(ROOT / "examples" / "udp_echo.py"),
               udp=True),
    *(
        ServerSpec(loop, "udp", f"{loop} DatagramProtocol", _py(PEERS / "udp_echo.py", "--loop", loop),
                   ("uvloop",) if loop == "uvloop" else (), udp=True)
        for loop in LOOPS
    ),
    ServerSpec("pygev", "sendfile", "pygev examples/sendfile_server.py (conn.sendfile)",
               _py(ROOT / "examples" / "sendfile_server.py")),
    ServerSpec("asyncio", "sendfile", "asyncio loop.sendfile",
               _py(PEERS / "sendfile_server.py", "--loop", "asyncio")),
    ServerSpec("uvloop", "sendfile", "uvloop: no loop.sendfile; pread + transport.write",
               _py(PEERS / "sendfile_server.py", "--loop", "uvloop"), ("uvloop",)),
    ServerSpec(
        "asyncio",
        "ws",
        "websockets lib, asyncio",
        _py(PEERS / "websockets_echo.py", "--loop", "asyncio"),
        ("websockets",),
    ),
    ServerSpec(
        "uvloop",
        "ws",
        "websockets lib, uvloop",
        _py(PEERS / "websockets_echo.py", "--loop", "uvloop"),
        ("websockets", "uvloop"),
    ),
    ServerSpec(
        "uvloop", "resp", "uvloop RESP peer", _py(PEERS / "resp_server.py", "--loop", "uvloop"), ("uvloop",)
    ),
    ServerSpec(
        "redis",
        "resp",
        "redis-server",
        (
            "redis-server",
            "--port",
            "{port}",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ),
        hint="Debian package redis-server",
    ),
]


def _uring_twins() -> list[ServerSpec]:
    """Every pygev server again on the io_uring backend, named pygev-uring (pygev-batch-uring)."""
    twins = []
    for spec in SERVERS:
        if spec.name.startswith("pygev"):
            name = spec.name.replace("pygev", "pygev-uring", 1)
            twins.append(replace(spec, name=name, label=spec.label + " (io_uring)",
                                 env=(("PYGEV_BACKEND", "io_uring"),)))
    return twins


SERVERS += _uring_twins()


def server_names() -> list[str]:
    """Every registered name, in registry order, without repeats."""
    return list(dict.fromkeys(spec.name for spec in SERVERS))


def specs_for(kind: str, names: list[str] | None) -> list[ServerSpec]:
    """The servers of `kind`, limited to `names` (in that order) when given."""
    of_kind = [spec for spec in SERVERS if spec.kind == kind]
    if names is None:
        return of_kind
    return [spec for name in names for spec in of_kind if spec.name == name]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)


class ServerProcess:
    """One running server, pinned with `pin` (e.g. ["taskset", "-c", "0"]), its output in `log_path`.

    The pid is the server's own (taskset execs it), so /proc/<pid> gives the server's CPU and RSS.
    """

    def __init__(self, spec: ServerSpec, pin: list[str], log_dir: Path, upstream_pin: list[str] = ()) -> None:
        self.spec = spec
        self.port = free_port()
        self.log_path = log_dir / f"{spec.kind}-{spec.name}-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.upstream: subprocess.Popen | None = None
        upstream_port = 0
        if spec.upstream:
            upstream_port = free_port()
            self.upstream = subprocess.Popen(
                [*upstream_pin, *(arg.replace("{port}", str(upstream_port)) for arg in spec.upstream)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            _wait_listening(upstream_port, 15.0)
        self.proc = subprocess.Popen(
            [*pin, *spec.command(self.port, upstream_port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **dict(spec.env)},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 15.0) -> str | None:
        """Wait until the port accepts a connection; None when ready, else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with status {self.proc.returncode} at start-up: {self.log_tail()}"
            if self.spec.udp:
                if self._udp_echoes():
                    return None
                continue
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return None
            except OSError:
                time.sleep(0.05)
        return f"not listening after {timeout:.0f} s: {self.log_tail()}"

    def _udp_echoes(self) -> bool:
        """One probe datagram to the port comes back within 0.2 s."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            try:
                sock.sendto(b"ready?", ("127.0.0.1", self.port))
                return sock.recv(64) == b"ready?"
            except OSError:
                return False

    def alive(self) -> str | None:
        """None while running, else why it is not."""
        if self.proc.poll() is None:
            return None
        return f"server exited with status {self.proc.returncode}: {self.log_tail()}"

    def log_tail(self, chars: int = 400) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_bytes()[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""
        return " | ".join(line for line in text.strip().splitlines() if line.strip())[-chars:]

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; only this process (and its upstream), by pid."""
        for proc in (self.proc, self.upstream):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
