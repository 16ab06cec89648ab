"""Handler.on_start / on_stop: once per serving process, on_start on the first loop before it
serves, on_stop after the last connection closed at stop; in-process and with 2 workers (each
worker process runs them once).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from reactor import Connection, Handler, Server
from support import TIMEOUT, closed_by_peer, connect, recv_exactly, serve, wait_until

REPO = Path(__file__).resolve().parent.parent


class Hooks(Handler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def note(self, what: str, detail: Any = None) -> None:
        with self.lock:
            self.events.append((what, detail))

    def on_start(self, server: Server) -> None:
        assert server.address is not None           # bound before on_start
        self.note("start", threading.get_ident())

    def on_connect(self, conn: Connection) -> None:
        self.note("connect", threading.get_ident())

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return data

    def on_close(self, conn: Connection, error: BaseException | None) -> None:
        self.note("close", error)

    def on_stop(self, server: Server) -> None:
        self.note("stop", server.connection_count)


def test_on_start_and_on_stop_run_once_around_everything_served() -> None:
    h = Hooks()
    srv = serve(h)
    with srv:
        clients = [connect(srv.address) for _ in range(3)]
        for c in clients:
            c.sendall(b"ping")
            assert recv_exactly(c, 4) == b"ping"
        assert [e[0] for e in h.events][0] == "start"
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        for c in clients:                       # the server's FIN, then ours: no linger
            assert closed_by_peer(c)
            c.close()
        stopper.join(TIMEOUT)
    kinds = [e[0] for e in h.events]
    assert kinds == ["start", "connect", "connect", "connect", "close", "close", "close", "stop"]
    start_thread = h.events[0][1]
    assert all(d == start_thread for k, d in h.events if k == "connect")   # the first loop's thread
    assert h.events[-1][1] == 0


def test_a_failing_on_start_fails_start_and_on_stop_does_not_run() -> None:
    class Broken(Hooks):
        def on_start(self, server: Server) -> None:
            raise RuntimeError("no database")

    h = Broken()
    with pytest.raises(RuntimeError, match="no database"):
        with serve(h):
            pass
    assert h.events == []


def test_hooks_on_a_client_handler_are_not_called_for_dials() -> None:
    """on_start/on_stop belong to a Server's handler; a dialing handler's are not called."""
    from reactor import Client
    h = Hooks()
    with serve(Handler()) as srv, Client() as cli:
        conn = cli.connect(f"127.0.0.1:{srv.address[1]}", h)
        wait_until(lambda: conn.connected, what="connected")
    wait_until(lambda: any(e[0] == "close" for e in h.events), what="closed")
    assert [e[0] for e in h.events] == ["connect", "close"]


SCRIPT = r"""
import json, os, sys, threading, time
from reactor import Handler, Server
path = sys.argv[1]
def note(*what):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, (json.dumps([os.getpid(), *what]) + "\n").encode())
    os.close(fd)
class H(Handler):
    def on_start(self, server):
        note("start")
    def on_connect(self, conn):
        note("connect")
    def on_message(self, conn, ctx, data):
        return b"%d" % os.getpid()
    def on_close(self, conn, error):
        note("close")
    def on_stop(self, server):
        note("stop")
srv = Server(H(), address="127.0.0.1:0", workers=int(sys.argv[2]))
import signal    # workers=1: stop on SIGTERM (a WorkerPool installs its own handler)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.stop, args=(5,)).start())
def announce():
    while srv.address is None:
        time.sleep(0.01)
    print(json.dumps(srv.address), flush=True)
threading.Thread(target=announce, daemon=True).start()
srv.start()
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_hooks_run_once_in_each_serving_process(tmp_path: Path, workers: int) -> None:
    log = tmp_path / "events"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(log), str(workers)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        address = tuple(json.loads(proc.stdout.readline()))
        wait_until(lambda: log.exists() and log.read_text().count('"start"') == workers,
                   what=f"{workers} on_start calls")
        pids: set[int] = set()
        clients = []
        for _ in range(40):                     # SO_REUSEPORT spreads these over the workers
            c = connect(address)
            c.sendall(b"?")
            pids.add(int(c.recv(32)))
            clients.append(c)
            if len(pids) == workers and len(clients) >= 4:
                break
        assert len(pids) == workers
        proc.send_signal(signal.SIGTERM)
        for c in clients:
            assert closed_by_peer(c)
            c.close()
        assert proc.wait(timeout=TIMEOUT + 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    by_pid: dict[int, list[str]] = {}
    for pid, what in events:
        by_pid.setdefault(pid, []).append(what)
    serving = {pid for pid, kinds in by_pid.items() if "start" in kinds}
    assert len(serving) == workers and pids <= serving
    for pid, kinds in by_pid.items():
        assert kinds.count("start") == 1 and kinds.count("stop") == 1, kinds
        assert kinds[0] == "start" and kinds[-1] == "stop", kinds
        assert kinds.count("connect") == kinds.count("close")
