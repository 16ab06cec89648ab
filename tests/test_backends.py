"""Backends (SPEC "Backends"): the backend argument, io_uring's fallback where it cannot be set up,
and the io_uring specifics the rest of the suite cannot see (fd numbers reused while completions
for the old connection are in flight, input held while reading is paused).  The whole suite runs
on either backend: PYGEV_BACKEND=io_uring python -m pytest."""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any

import pytest
from support import TIMEOUT, EchoRecorder, Recorder, connect, recv_exactly, serve

from reactor import Connection, Server, backends

URING_MISSING = backends.uring_unavailable()
AVAILABLE = ["epoll"] if URING_MISSING else ["epoll", "io_uring"]


def test_backend_argument_is_checked_at_construction() -> None:
    with pytest.raises(TypeError, match="backend"):
        Server(EchoRecorder(), backend=1)          # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend"):
        Server(EchoRecorder(), backend="kqueue2")  # type: ignore[arg-type]


def test_io_uring_where_available_else_a_clear_error() -> None:
    if URING_MISSING:
        with pytest.raises(OSError, match="io_uring"):
            Server(EchoRecorder(), address="127.0.0.1:0", backend="io_uring")
        return
    with serve(EchoRecorder(), backend="io_uring") as srv:
        assert srv.backend == "io_uring"
        with connect(srv.address) as sock:
            sock.sendall(b"over io_uring")
            assert recv_exactly(sock, 13) == b"over io_uring"


def test_unavailable_io_uring_falls_back_to_epoll_logged_once(monkeypatch: Any, caplog: Any) -> None:
    # Simulate a kernel that refuses io_uring (kernel.io_uring_disabled, a seccomp filter).
    monkeypatch.setattr(backends, "_status", "io_uring is not permitted here (Operation not "
                                             "permitted: simulated)")
    monkeypatch.setattr(backends, "_fallback_logged", False)
    monkeypatch.setenv(backends.ENV, "io_uring")
    caplog.set_level(logging.INFO, logger="reactor.backends")
    with pytest.raises(OSError, match="not permitted here"):
        Server(EchoRecorder(), address="127.0.0.1:0", backend="io_uring")
    first = Server(EchoRecorder(), address="127.0.0.1:0")
    second = Server(EchoRecorder(), address="127.0.0.1:0")
    assert first.backend == second.backend == "epoll"
    notes = [r for r in caplog.records if r.name == "reactor.backends"]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO
    assert "not permitted here" in notes[0].getMessage()
    with first:                     # and the fallback serves
        with connect(first.address) as sock:
            sock.sendall(b"fallback")
            assert recv_exactly(sock, 8) == b"fallback"


def test_bad_backend_environment_variable_is_named(monkeypatch: Any) -> None:
    monkeypatch.setenv(backends.ENV, "select")
    with pytest.raises(ValueError, match=backends.ENV):
        Server(EchoRecorder(), address="127.0.0.1:0")


@pytest.mark.parametrize("backend", AVAILABLE)
def test_reused_fd_numbers_never_see_an_old_connections_bytes(backend: str) -> None:
    # Connections reset while their echo is in flight; the next connection often gets the same
    # fd number on the server.  Each must read exactly its own bytes.
    linger = struct.pack("ii", 1, 0)
    with serve(EchoRecorder(), backend=backend) as srv:
        for i in range(150):
            doomed = connect(srv.address)
            doomed.sendall(b"old-%04d" % i * 512)
            doomed.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            doomed.close()                          # RST with the echo on its way back
            with connect(srv.address) as fresh:
                mine = b"new-%04d" % i
                fresh.sendall(mine)
                assert recv_exactly(fresh, len(mine)) == mine


class PauseOnFirst(Recorder):
    """Pauses reading after the first message; records every message in order."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[bytes] = []
        self.seen_while_paused: list[bytes] = []
        self.paused = threading.Event()

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        with self.cond:
            self.messages.append(bytes(data))
            if self.paused.is_set():
                self.seen_while_paused.append(bytes(data))
            self.cond.notify_all()
        if len(self.messages) == 1:
            conn.pause_reading()
            self.paused.set()
        return data


@pytest.mark.parametrize("backend", AVAILABLE)
def test_paused_reading_holds_input_until_resumed_in_order(backend: str) -> None:
    handler = PauseOnFirst()
    with serve(handler, backend=backend) as srv:
        with connect(srv.address) as sock:
            sock.sendall(b"first")
            assert recv_exactly(sock, 5) == b"first"
            assert handler.paused.wait(TIMEOUT)
            rest = b"".join(b"<%05d>" % i for i in range(2000))
            sock.sendall(rest)
            time.sleep(0.2)                 # let it reach the server while reading is paused
            conn = handler.wait_connected(1)[0]
            handler.paused.clear()
            assert handler.seen_while_paused == [] and handler.messages == [b"first"]
            conn.resume_reading()
            assert recv_exactly(sock, len(rest)) == rest
            assert b"".join(handler.messages) == b"first" + rest
