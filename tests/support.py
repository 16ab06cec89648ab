"""Helpers shared by the server tests: a server on an ephemeral loopback port, a handler that
records its callbacks, bounded socket I/O (every wait has a deadline, so a bug fails a test
instead of hanging it) and a subprocess runner for tests that must survive a crash.
"""
from __future__ import annotations

import os
import random
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from reactor import Connection, Handler, Server

TIMEOUT = 10.0      # upper bound for any single wait; never reached when things work


# -- servers and clients -----------------------------------------------------------------------
def serve(handler: Handler, **options: Any) -> Server:
    """A Server on 127.0.0.1, port 0; use as `with serve(h) as srv:` (serves in the background)."""
    options.setdefault("address", "127.0.0.1:0")
    return Server(handler, **options)


def connect(address: Any, timeout: float = TIMEOUT, rcvbuf: int | None = None,
            sndbuf: int | None = None) -> socket.socket:
    """A blocking client socket with a timeout; buffer sizes are set before connecting."""
    sock = socket.socket(socket.AF_INET6 if len(address) == 4 else socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def recv_exactly(sock: socket.socket, n: int, timeout: float = TIMEOUT) -> bytes:
    """Exactly n bytes from `sock`; fails on EOF or when they do not arrive within `timeout`."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out after {len(buf)} of {n} bytes"
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def recv_to_eof(sock: socket.socket, timeout: float = TIMEOUT, limit: int = 64 << 20) -> bytes:
    """Everything until the peer's FIN; fails on timeout or past `limit` bytes.  A reset
    propagates as ConnectionResetError."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no EOF within {timeout}s ({len(buf)} bytes read)"
        sock.settimeout(left)
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        assert len(buf) <= limit, "more data than expected and no EOF"


def closed_by_peer(sock: socket.socket, timeout: float = TIMEOUT) -> bool:
    """True once the peer closed (FIN or RST) without sending anything more."""
    try:
        return recv_to_eof(sock, timeout, limit=0) == b""
    except ConnectionResetError:
        return True


def echo_exchange(address: Any, payload: bytes, rng: random.Random, max_chunk: int = 256 << 10,
                  timeout: float = 30.0) -> bytes:
    """Send `payload` in random-sized chunks while reading concurrently (one non-blocking
    socket, a selector); return what came back once len(payload) bytes arrived."""
    sock = connect(address)
    sock.setblocking(False)
    received = bytearray()
    sent = 0
    deadline = time.monotonic() + timeout
    view = memoryview(payload)
    with sock, selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while len(received) < len(payload):
            left = deadline - time.monotonic()
            assert left > 0, f"echo timed out: sent {sent}, received {len(received)} of {len(payload)}"
            for _, events in sel.select(min(left, 1.0)):
                if events & selectors.EVENT_READ:
                    chunk = sock.recv(1 << 20)
                    assert chunk, f"EOF after {len(received)} of {len(payload)} echoed bytes"
                    received += chunk
                if events & selectors.EVENT_WRITE and sent < len(payload):
                    n = rng.randint(1, max_chunk)
                    try:
                        sent += sock.send(view[sent:sent + n])
                    except BlockingIOError:
                        pass
                    if sent == len(payload):
                        sel.modify(sock, selectors.EVENT_READ)
    return bytes(received)


# -- waiting -----------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll `predicate` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# -- a handler that records its callbacks ------------------------------------------------------
class Recorder(Handler):
    """Records on_connect / on_close (with thread ids and errors); subclasses add on_message
    and must call super() when they override on_connect / on_close."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.connected: list[Connection] = []
        self.connect_thread: dict[int, int] = {}            # id(conn) -> thread ident
        self.closes: dict[int, list[BaseException | None]] = {}   # id(conn) -> errors
        self.close_order: list[Connection] = []

    def on_connect(self, conn: Connection) -> None:
        with self.cond:
            self.connected.append(conn)
            self.connect_thread[id(conn)] = threading.get_ident()
            self.cond.notify_all()

    def on_close(self, conn: Connection, error: BaseException | None) -> None:
        with self.cond:
            self.closes.setdefault(id(conn), []).append(error)
            self.close_order.append(conn)
            self.cond.notify_all()

    def wait_connected(self, n: int, timeout: float = TIMEOUT) -> list[Connection]:
        """Wait until n connections have been seen by on_connect; return them in order."""
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.connected) >= n, timeout)
            assert ok, f"only {len(self.connected)} of {n} on_connect calls"
            return list(self.connected)

    def wait_closed(self, conn: Connection, timeout: float = TIMEOUT) -> BaseException | None:
        """Wait for on_close(conn); return its error."""
        with self.cond:
            ok = self.cond.wait_for(lambda: id(conn) in self.closes, timeout)
            assert ok, "on_close was not called"
            return self.closes[id(conn)][0]

    def close_count(self, conn: Connection) -> int:
        with self.cond:
            return len(self.closes.get(id(conn), []))


class EchoRecorder(Recorder):
    """Recorder that echoes every message (returning the memoryview: no copy)."""

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return data


# -- processes and descriptors -----------------------------------------------------------------
def open_fds() -> set[str]:
    """This process's open file descriptors (Linux /proc)."""
    return set(os.listdir("/proc/self/fd"))


def run_python(code: str, env_extra: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run `code` in a fresh interpreter and return its stdout; fail with its output unless it
    exits with 0 (a crash shows as a negative return code, e.g. -11 for SIGSEGV)."""
    env = dict(os.environ)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


# -- metrics -----------------------------------------------------------------------------------
def scrape_metrics(address: Any, path: str = "/metrics") -> dict[str, float]:
    """A Prometheus exposition as {sample name with labels: value}."""
    import urllib.request
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=TIMEOUT) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples
