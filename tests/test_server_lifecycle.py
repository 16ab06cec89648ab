"""Connection and server lifecycle: shutdown_write, idle timeout, max_connections,
stop() flushing and cleaning up (descriptors, threads), stop() idempotence."""
from __future__ import annotations

import gc
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from support import (
    TIMEOUT,
    EchoRecorder,
    Recorder,
    closed_by_peer,
    connect,
    open_fds,
    recv_exactly,
    recv_to_eof,
    serve,
    wait_until,
)

from reactor import Connection


def test_shutdown_write_flushes_then_fin_and_keeps_reading() -> None:
    reply = bytes(range(256)) * 4096                      # 1 MiB, more than one write
    received: list[bytes] = []

    class HalfClose(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            received.append(bytes(data))
            if received == [b"go"]:
                conn.send(reply)
                conn.shutdown_write()
            return None

    handler = HalfClose()
    with serve(handler) as srv:
        sock = connect(srv.address)
        with sock:
            conn = handler.wait_connected(1)[0]
            sock.sendall(b"go")
            assert recv_to_eof(sock) == reply             # everything queued, then FIN
            sock.sendall(b"still listening?")             # our direction is still open
            wait_until(lambda: b"".join(received) == b"gostill listening?", what="data after FIN")
            assert conn.connected
            assert handler.close_count(conn) == 0
            sock.close()
            assert handler.wait_closed(conn) is None
    assert handler.close_count(conn) == 1


class PushOnRequest(EchoRecorder):
    """Echoes, except b"push": then the server writes b"." every 0.1 s (server-side activity only)."""

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        if bytes(data) == b"push":
            conn.loop.run_every(0.1, lambda: conn.connected and conn.send(b"."))
            return None
        return data


def test_idle_timeout_closes_idle_but_not_active_connections() -> None:
    handler = PushOnRequest()
    with serve(handler, idle_timeout=1) as srv:
        idle = connect(srv.address)
        idle_opened = time.monotonic()
        idle_conn = handler.wait_connected(1)[0]
        active = connect(srv.address)                    # the client talks every 0.1 s
        active_conn = handler.wait_connected(2)[1]
        pushed = connect(srv.address)                    # the server talks every 0.1 s
        pushed_conn = handler.wait_connected(3)[2]
        with idle, active, pushed:
            pushed.sendall(b"push")
            pushed.setblocking(False)
            idle.setblocking(False)
            # Run until the idle one is closed, and a further 1.5 s (longer than the timeout).
            closed_at = None
            stop_at = time.monotonic() + TIMEOUT
            while time.monotonic() < stop_at:
                active.sendall(b"tick")
                assert recv_exactly(active, 4) == b"tick"
                try:
                    assert pushed.recv(65536).strip(b".") == b""
                except BlockingIOError:
                    pass
                if closed_at is None:
                    try:
                        if idle.recv(1) == b"":
                            closed_at = time.monotonic()
                            stop_at = closed_at + 1.5
                    except BlockingIOError:
                        pass
                time.sleep(0.1)
            assert closed_at is not None, "idle connection was never closed"
            # SPEC: no earlier than t after the last activity (the server accepted after we
            # connected, so its clock for this connection started no earlier than ours).
            assert closed_at - idle_opened >= 1.0 - 0.02
            assert isinstance(handler.wait_closed(idle_conn), TimeoutError)
            for conn in (active_conn, pushed_conn):
                assert handler.close_count(conn) == 0 and conn.connected
    assert handler.close_count(idle_conn) == 1
    assert handler.closes[id(active_conn)] == [None]
    assert handler.close_count(pushed_conn) == 1   # None or a reset: we closed with unread pushes


def test_max_connections_closes_the_extra_one_at_once() -> None:
    handler = EchoRecorder()
    with serve(handler, max_connections=2) as srv:
        first, second = connect(srv.address), connect(srv.address)
        handler.wait_connected(2)
        extra = connect(srv.address)                   # the kernel accepts; the server drops it
        with extra:
            assert closed_by_peer(extra)
        for sock in (first, second):
            sock.sendall(b"ok")
            assert recv_exactly(sock, 2) == b"ok"
        assert len(handler.connected) == 2 and srv.connection_count == 2
        # A slot freed by a close can be used again.
        first.close()
        handler.wait_closed(handler.connected[0])
        wait_until(lambda: srv.connection_count == 1, what="connection_count to drop")
        third = connect(srv.address)
        with third, second:
            handler.wait_connected(3)
            third.sendall(b"again")
            assert recv_exactly(third, 5) == b"again"
    assert len(handler.connected) == 3, "on_connect must not run for the refused connection"
    assert all(handler.close_count(c) == 1 for c in handler.connected)


def test_connection_churn_leaks_no_descriptor() -> None:
    fds_before = open_fds()
    handler = EchoRecorder()
    with serve(handler, num_loops=2) as srv:
        for i in range(300):
            sock = connect(srv.address)
            with sock:
                sock.sendall(b"%d" % i)
                assert recv_exactly(sock, len(b"%d" % i)) == b"%d" % i
        wait_until(lambda: srv.connection_count == 0, what="every connection closed")
        assert len(handler.connected) == 300
    assert open_fds() == fds_before
    assert all(handler.close_count(c) == 1 for c in handler.connected)


def server_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t is not threading.current_thread()}


def test_stop_flushes_queued_output_and_leaves_nothing_behind() -> None:
    payload = bytes(range(251)) * (16 << 12)             # ~16 MiB: far more than socket buffers
    fds_before = open_fds()
    threads_before = server_threads()

    class Push(Recorder):
        def on_connect(self, conn: Connection) -> None:
            super().on_connect(conn)
            conn.send(payload)

    handler = Push()
    with serve(handler, num_loops=2) as srv:
        socks = [connect(srv.address, rcvbuf=65536) for _ in range(2)]
        conns = handler.wait_connected(2)
        wait_until(lambda: all(c.pending_write > 0 for c in conns), what="output to queue up")
        stopper = threading.Thread(target=srv.stop)
        stopper.start()                                  # stop() waits for the flush...
        results: dict[int, bytes] = {}

        def drain(i: int) -> None:                       # ...which needs us to read
            results[i] = recv_to_eof(socks[i], timeout=30)

        readers = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(40)
        for sock in socks:
            sock.close()
        assert results.get(0) == payload and results.get(1) == payload
        stopper.join(TIMEOUT)
        assert not stopper.is_alive(), "stop() did not return"
        srv.stop()                                       # twice is harmless
    srv.stop()                                           # and after the with-block too
    assert [handler.closes.get(id(c)) for c in conns] == [[None], [None]]
    assert srv.connection_count == 0
    assert open_fds() == fds_before, "descriptors leaked"
    assert server_threads() <= threads_before, "server threads still running"


def test_stop_without_connections_and_idempotence() -> None:
    fds_before = open_fds()
    threads_before = server_threads()
    srv = serve(EchoRecorder(), num_loops=3)
    with srv:
        address = srv.address
        sock = connect(address)
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
        sock.close()
    srv.stop()
    srv.stop()
    assert open_fds() == fds_before
    assert server_threads() <= threads_before
    try:                                                 # nothing listens there any more
        connect(address, timeout=2).close()
        refused = False
    except ConnectionRefusedError:
        refused = True
    assert refused


def test_never_started_server_leaves_nothing_behind() -> None:
    fds_before = open_fds()
    threads_before = server_threads()
    srv = serve(EchoRecorder(), num_loops=3)
    srv.stop()
    srv.stop()
    del srv
    gc.collect()
    assert open_fds() == fds_before
    assert server_threads() <= threads_before


def test_port_in_use_raises_and_cleans_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        fds_before = open_fds()
        threads_before = server_threads()
        srv = serve(EchoRecorder(), address=f"127.0.0.1:{port}", num_loops=2)
        with pytest.raises(OSError), srv:
            pass
        srv.stop()
        assert open_fds() == fds_before
        wait_until(lambda: server_threads() <= threads_before, what="server threads to end")


def test_stop_timeout_bounds_the_flush() -> None:
    """A client that never reads cannot keep stop(timeout) waiting forever."""
    fds_before = open_fds()
    payload = b"z" * (32 << 20)

    class Push(Recorder):
        def on_connect(self, conn: Connection) -> None:
            super().on_connect(conn)
            conn.send(payload)

    handler = Push()
    with serve(handler) as srv:
        sock = connect(srv.address, rcvbuf=65536)
        conn = handler.wait_connected(1)[0]
        wait_until(lambda: conn.pending_write > 0, what="output to queue up")
        stopper = threading.Thread(target=srv.stop, kwargs={"timeout": 0.5})
        stopper.start()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive(), "stop(timeout=0.5) did not return"
    sock.close()
    assert handler.close_count(conn) == 1
    assert open_fds() == fds_before


@contextmanager
def blocking_start(srv: Any) -> Iterator[threading.Thread]:
    """srv.start() (which blocks) on a thread of its own; stopped and joined on the way out."""
    runner = threading.Thread(target=srv.start)
    runner.start()
    try:
        wait_until(lambda: srv.address is not None, what="the server to bind")
        yield runner
    finally:
        srv.stop()
        runner.join(TIMEOUT)


def test_start_blocks_until_stop_from_another_thread() -> None:
    srv = serve(EchoRecorder())
    with blocking_start(srv) as runner:
        sock = connect(srv.address)
        with sock:
            sock.sendall(b"blocking start")
            assert recv_exactly(sock, 14) == b"blocking start"
        assert runner.is_alive()
    assert not runner.is_alive(), "start() did not return after stop()"


def test_stop_from_inside_a_handler() -> None:
    class Quit(Recorder):
        server: Any = None

        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            if bytes(data) == b"quit":
                self.server.stop()
                return b"bye"
            return data

    handler = Quit()
    srv = serve(handler)
    handler.server = srv
    with blocking_start(srv) as runner:
        sock = connect(srv.address)
        with sock:
            sock.sendall(b"quit")
            assert recv_to_eof(sock) == b"bye"
        runner.join(TIMEOUT)
        assert not runner.is_alive(), "start() did not return after stop() from a handler"
    assert handler.closes[id(handler.connected[0])] == [None]
