"""Every way a connection ends calls on_close exactly once, with the SPEC's `error`:
peer FIN -> None, reset -> OSError, conn.close() -> None, server.stop() -> None,
user exception -> that exception (logged at ERROR with its traceback).  The idle-timeout
path (TimeoutError) is in test_server_lifecycle.py."""
from __future__ import annotations

import logging
import socket
import struct
from typing import Any

import pytest
from support import (
    EchoRecorder,
    Recorder,
    closed_by_peer,
    connect,
    recv_exactly,
    recv_to_eof,
    serve,
    wait_until,
)

from reactor import Connection, ConnectionClosed


def test_peer_fin_closes_with_none() -> None:
    handler = EchoRecorder()
    with serve(handler) as srv:
        sock = connect(srv.address)
        conn = handler.wait_connected(1)[0]
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"
        sock.close()
        assert handler.wait_closed(conn) is None
        assert not conn.connected
    assert handler.close_count(conn) == 1


def test_peer_reset_closes_with_oserror() -> None:
    handler = EchoRecorder()
    with serve(handler) as srv:
        sock = connect(srv.address)
        conn = handler.wait_connected(1)[0]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()                                   # linger 0: RST instead of FIN
        error = handler.wait_closed(conn)
        assert isinstance(error, OSError), repr(error)
    assert handler.close_count(conn) == 1


def test_peer_half_close_still_gets_its_reply() -> None:
    # Like `printf request | nc host port`: the request, then FIN; the reply must still
    # arrive before the server closes (asyncio behaves the same way).
    handler = EchoRecorder()
    with serve(handler) as srv:
        sock = connect(srv.address)
        with sock:
            sock.sendall(b"request")
            sock.shutdown(socket.SHUT_WR)
            assert recv_to_eof(sock) == b"request"
            conn = handler.wait_connected(1)[0]
            assert handler.wait_closed(conn) is None
    assert handler.close_count(conn) == 1


def test_reset_with_queued_output_closes_with_oserror() -> None:
    class Flood(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            return b"f" * (16 << 20)

    handler = Flood()
    with serve(handler) as srv:
        sock = connect(srv.address, rcvbuf=65536)
        conn = handler.wait_connected(1)[0]
        sock.sendall(b"go")
        wait_until(lambda: conn.pending_write > 0, what="output to queue up")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        assert isinstance(handler.wait_closed(conn), OSError)
        assert conn.pending_write == 0
    assert handler.close_count(conn) == 1


def test_conn_close_in_on_message_flushes_then_closes_with_none() -> None:
    # Assumption (SPEC silent): like asyncio's transport.close(), close() still delivers
    # what was queued before it.
    class Bye(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            conn.send(b"bye:" + bytes(data))
            conn.close()
            return None

    handler = Bye()
    with serve(handler) as srv:
        sock = connect(srv.address)
        with sock:
            conn = handler.wait_connected(1)[0]
            sock.sendall(b"x")
            assert recv_to_eof(sock) == b"bye:x"
            assert handler.wait_closed(conn) is None
    assert handler.close_count(conn) == 1


def test_conn_close_from_another_thread_twice() -> None:
    handler = EchoRecorder()
    with serve(handler) as srv:
        sock = connect(srv.address)
        with sock:
            conn = handler.wait_connected(1)[0]
            conn.close()
            conn.close()                                # a second close is harmless
            assert closed_by_peer(sock)
            assert handler.wait_closed(conn) is None
    assert handler.close_count(conn) == 1


def test_close_in_on_connect() -> None:
    class Reject(Recorder):
        def on_connect(self, conn: Connection) -> None:
            super().on_connect(conn)
            conn.close()

    handler = Reject()
    with serve(handler) as srv:
        sock = connect(srv.address)
        with sock:
            assert recv_to_eof(sock) == b""
            conn = handler.wait_connected(1)[0]
            assert handler.wait_closed(conn) is None
    assert handler.close_count(conn) == 1


def test_server_stop_closes_every_connection_with_none() -> None:
    handler = EchoRecorder()
    with serve(handler, num_loops=2) as srv:
        socks = [connect(srv.address) for _ in range(4)]
        conns = handler.wait_connected(4)
        srv.stop()
    for sock in socks:
        assert closed_by_peer(sock)
        sock.close()
    assert [handler.closes.get(id(c)) for c in conns] == [[None]] * 4


def error_records(caplog: pytest.LogCaptureFixture, exc: BaseException) -> list[logging.LogRecord]:
    """ERROR records under the `reactor` logger that carry `exc` with its traceback."""
    return [r for r in caplog.records
            if r.name.split(".")[0] == "reactor" and r.levelno == logging.ERROR
            and r.exc_info is not None and r.exc_info[1] is exc and r.exc_info[2] is not None]


def test_exception_in_on_message_is_logged_and_passed_to_on_close(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="reactor")
    raised: list[BaseException] = []

    class Boom(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            exc = ValueError("boom in on_message")
            raised.append(exc)
            raise exc

    handler = Boom()
    with serve(handler) as srv:
        sock = connect(srv.address)
        with sock:
            conn = handler.wait_connected(1)[0]
            sock.sendall(b"x")
            assert closed_by_peer(sock)
            error = handler.wait_closed(conn)
    assert error is raised[0]
    assert handler.close_count(conn) == 1
    assert error_records(caplog, error), caplog.text


def test_exception_in_on_connect_still_calls_on_close_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="reactor")
    raised: list[BaseException] = []

    class BadConnect(Recorder):
        def on_connect(self, conn: Connection) -> None:
            super().on_connect(conn)
            exc = RuntimeError("boom in on_connect")
            raised.append(exc)
            raise exc

    handler = BadConnect()
    with serve(handler) as srv:
        sock = connect(srv.address)
        with sock:
            assert closed_by_peer(sock)
            conn = handler.wait_connected(1)[0]
            error = handler.wait_closed(conn)
    assert error is raised[0]
    assert handler.close_count(conn) == 1
    assert error_records(caplog, error), caplog.text


def test_exception_in_one_connection_leaves_the_others_working(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="reactor")   # the traceback is expected here

    class BoomOnBang(EchoRecorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            if bytes(data).startswith(b"!"):
                raise KeyError("bang")
            return data

    handler = BoomOnBang()
    with serve(handler, num_loops=1) as srv:
        good, bad, other = (connect(srv.address) for _ in range(3))
        with good, bad, other:
            handler.wait_connected(3)
            good.sendall(b"before")
            assert recv_exactly(good, 6) == b"before"
            bad.sendall(b"!")
            assert closed_by_peer(bad)
            for sock in (good, other):
                sock.sendall(b"after")
                assert recv_exactly(sock, 5) == b"after"
            fresh = connect(srv.address)
            with fresh:
                fresh.sendall(b"new")
                assert recv_exactly(fresh, 3) == b"new"


def test_send_after_close_raises_connection_closed() -> None:
    assert issubclass(ConnectionClosed, ConnectionError)
    handler = EchoRecorder()
    with serve(handler) as srv:
        sock = connect(srv.address)
        conn = handler.wait_connected(1)[0]
        sock.close()
        handler.wait_closed(conn)
        with pytest.raises(ConnectionClosed):
            conn.send(b"too late")
        assert conn.connected is False
