"""Honest mistakes answered once, in words: a start failure inside `with`, and what
pending_write counts for a broadcaster deciding whom to skip."""
from __future__ import annotations

import logging
import socket
import threading

import pytest
from support import Recorder, connect, serve

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
