"""Faults inside one process: a peer reset while the server writes closes just that connection,
stop() flushes a large queued output before closing, and a callback that blocks the loop is
logged on reactor.loop."""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any

import pytest
from support import TIMEOUT, Recorder, connect, recv_exactly, recv_to_eof, serve

from reactor import Connection


class Blaster(Recorder):
    """Echoes, except that b"blast" queues 4 MiB at once."""

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        if bytes(data) == b"blast":
            conn.send(b"z" * (4 << 20))
            return None
        return data


def test_a_reset_while_the_server_writes_closes_only_that_connection() -> None:
    handler = Blaster()
    with serve(handler) as srv:
        bystander = connect(srv.address)
        victim = connect(srv.address, rcvbuf=4096)
        conns = handler.wait_connected(2)
        victim.sendall(b"blast")
        victim.recv(1024)                   # the server is writing; most of it is still queued
        victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        victim.close()                      # RST: the server's next write fails (ECONNRESET/EPIPE)
        error = handler.wait_closed(conns[1])
        assert isinstance(error, OSError), error
        assert handler.close_count(conns[0]) == 0
        for i in range(3):
            bystander.sendall(b"still here %d" % i)
            assert recv_exactly(bystander, 12) == b"still here %d" % i
        assert srv.connection_count == 1
        bystander.close()


def test_stop_flushes_8_mib_of_queued_output_before_closing() -> None:
    size = 8 << 20
    payload = bytes(range(251)) * (size // 251) + b"!" * (size % 251)

    class Pusher(Recorder):
        def on_connect(self, conn: Connection) -> None:
            super().on_connect(conn)
            conn.send(payload)

    handler = Pusher()
    srv = serve(handler)
    with srv:
        client = connect(srv.address, rcvbuf=64 << 10)
        (conn,) = handler.wait_connected(1)
        stopper = threading.Thread(target=srv.stop, args=(TIMEOUT,))
        stopper.start()
        received = recv_to_eof(client, timeout=TIMEOUT, limit=size)
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
    assert len(received) == size
    assert received == payload
    assert handler.wait_closed(conn) is None
    client.close()


def test_a_callback_blocking_the_loop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Sleepy(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            time.sleep(0.3)                # three times the threshold below
            return data

    with caplog.at_level(logging.WARNING, logger="reactor.loop"):
        with serve(Sleepy(), slow_callback=0.1) as srv, connect(srv.address) as s:
            s.sendall(b"zzz")
            assert recv_exactly(s, 3) == b"zzz"
    slow = [r for r in caplog.records if r.name == "reactor.loop" and r.levelno == logging.WARNING]
    assert slow, "no warning for a 0.3 s on_message with slow_callback=0.1"
    assert any("Sleepy" in r.getMessage() for r in slow), [r.getMessage() for r in slow]


def test_a_quick_callback_is_not_logged_as_slow(caplog: pytest.LogCaptureFixture) -> None:
    handler = Recorder()
    handler.on_message = lambda conn, ctx, data: data  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="reactor.loop"):
        with serve(handler, slow_callback=5.0) as srv, connect(srv.address) as s:
            s.sendall(b"quick")
            assert recv_exactly(s, 5) == b"quick"
    assert not [r for r in caplog.records if r.name == "reactor.loop" and r.levelno >= logging.WARNING]


def test_a_slow_turn_names_what_was_slow_not_the_handler(caplog: pytest.LogCaptureFixture) -> None:
    """200 MiB sent from another thread to a client that does not read: the time goes into
    copying what the kernel did not take, and the warning says so (the handler has no
    on_message at all)."""
    handler = Recorder()
    big = b"z" * (200 << 20)
    with caplog.at_level(logging.WARNING, logger="reactor.loop"):
        with serve(handler, slow_callback=0.02, write_limit=1 << 30,
                   write_high_water=1 << 30) as srv, connect(srv.address, rcvbuf=4096) as s:
            (conn,) = handler.wait_connected(1)
            conn.send(big)                      # from this thread: posted to the loop
            deadline = time.monotonic() + TIMEOUT
            while conn.pending_write == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            deadline = time.monotonic() + TIMEOUT
            while not [r for r in caplog.records if "slow loop turn" in r.getMessage()] \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            s.close()
    slow = [r.getMessage() for r in caplog.records if "slow loop turn" in r.getMessage()]
    assert slow, "no slow-turn warning for a 200 MiB copy"
    assert all("on_message" not in m for m in slow), slow
    assert any("writing output" in m or "other threads" in m for m in slow), slow
