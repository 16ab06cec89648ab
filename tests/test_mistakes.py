"""Honest mistakes answered once, in words: a start failure inside `with`, and what
pending_write counts for a broadcaster deciding whom to skip."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading

import pytest
from support import Recorder, connect, run_python, serve

from reactor import Server


def test_a_start_failure_inside_with_is_raised_once_and_not_logged_as_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with caplog.at_level(logging.DEBUG, logger="reactor"):
            with pytest.raises(OSError):
                with Server(Recorder(), address=f"127.0.0.1:{port}"):
                    pass
    finally:
        taken.close()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


def test_pending_write_counts_sends_from_other_threads_at_once() -> None:
    """A broadcast that skips connections by pending_write must see what it queued itself,
    before the loop has taken it from the inbox."""
    handler = Recorder()
    with serve(handler) as srv, connect(srv.address, rcvbuf=4096):
        (conn,) = handler.wait_connected(1)
        busy, release = threading.Event(), threading.Event()
        srv.run_after(0, lambda: (busy.set(), release.wait(5)))    # hold the loop still
        assert busy.wait(5)
        try:
            assert conn.pending_write == 0
            conn.send(b"x" * (1 << 20))       # from this thread: counted when send() returns
            conn.send(b"y" * 10)
            assert conn.pending_write == (1 << 20) + 10
        finally:
            release.set()


def test_a_missing_extra_names_the_pip_install() -> None:
    out = run_python(
        "import sys\n"
        "sys.modules['prometheus_client'] = None\n"       # as if not installed
        "sys.modules['google.protobuf'] = None\n"
        "sys.modules['google.protobuf.message'] = None\n"
        "from reactor import Server, Handler\n"
        "try:\n"
        "    Server(Handler(), address='127.0.0.1:0', metrics_address='127.0.0.1:0')\n"
        "except ImportError as e:\n"
        "    print('metrics:', e)\n"
        "try:\n"
        "    import reactor.plugins.protobuf\n"
        "except ImportError as e:\n"
        "    print('protobuf:', e)\n"
        "for name in [m for m in sys.modules if m.startswith('wsproto')] + ['wsproto']:\n"
        "    sys.modules[name] = None\n"
        "try:\n"
        "    import reactor.plugins.websocket\n"
        "except ImportError as e:\n"
        "    print('websocket:', e)\n")
    assert "metrics: " in out and "pip install 'pygev[metrics]'" in out, out
    assert "protobuf: " in out and "pip install 'pygev[protobuf]'" in out, out
    assert "websocket: " in out and "pip install 'pygev[websocket]'" in out, out


# A server whose one client holds 8 MiB of output it reads a little at a time (a graceful stop
# would wait for it), and that sends this process SIGINT twice: the second must end the stop.
_TWO_CTRL_C = (
    "import os, signal, socket, threading, time\n"
    "from reactor import Server, Handler\n"
    "class H(Handler):\n"
    "    def on_connect(self, conn):\n"
    "        conn.send(b'x' * (8 << 20))\n"
    "srv = Server(H(), address='127.0.0.1:0')\n"
    "def client():\n"
    "    while srv.address is None: time.sleep(0.01)\n"
    "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n"
    "    s.connect(srv.address)\n"
    "    while srv.connection_count == 0: time.sleep(0.01)\n"
    "    time.sleep(0.2); os.kill(os.getpid(), signal.SIGINT)\n"
    "    time.sleep(0.5); os.kill(os.getpid(), signal.SIGINT)\n"
    "    end = time.monotonic() + 10\n"
    "    while time.monotonic() < end:\n"
    "        s.recv(64); time.sleep(0.1)\n"
    "    print('client gave up', flush=True); s.close()\n"
)


def _run_interrupted(main: str) -> str:
    """Run _TWO_CTRL_C with `main` as its main program; the combined output, checked clean."""
    proc = subprocess.run([sys.executable, "-c", _TWO_CTRL_C + main], capture_output=True, text=True,
                          timeout=40)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert "client gave up" not in out, out     # it ended on the second Ctrl-C, not on the client
    return out


def test_a_second_ctrl_c_during_a_graceful_stop_ends_it_cleanly() -> None:
    """start() on the main thread, a client that never reads holding 8 MiB of output: the first
    SIGINT starts the graceful stop (which would wait for the flush), the second ends it at
    once - no traceback, no fd left, exit 0."""
    out = _run_interrupted(
        "threading.Thread(target=client, daemon=True).start()\n"
        "srv.start()\n"
        "print('connections', srv.connection_count)\n")
    assert "connections 0" in out and "KeyboardInterrupt" not in out, out


def test_a_second_ctrl_c_while_leaving_a_with_block_ends_the_stop_cleanly() -> None:
    out = _run_interrupted(
        "try:\n"
        "    with srv:\n"
        "        threading.Thread(target=client, daemon=True).start()\n"
        "        time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
        "print('connections', srv.connection_count)\n")
    assert "interrupted" in out and "connections 0" in out, out
