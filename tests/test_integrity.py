"""Regression tests for the SPEC's "Safety rules" and the close/reply paths around them:
a server serves once, kept message views never show another connection's bytes, replies
returned with close() / shutdown_write() go out before a clean FIN, a send()'s buffer is
copied when it returns, a close with unread input lingers instead of resetting, on_eof keeps
a half-closed connection open, peer_addr survives a reset, a non-bytes reply is a TypeError
that sends nothing, stop() leaks no descriptors, and send() after close raises."""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any

import pytest
from ringbuf import RingBuffer
from support import (
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

from reactor import Connection, ConnectionClosed

WAIT = 5.0      # bound for every socket wait in this file


# 1 -------------------------------------------------------------------------------------------
def test_start_or_reenter_while_serving_raises_and_server_keeps_serving() -> None:
    handler = EchoRecorder()
    with serve(handler) as srv:
        with pytest.raises(RuntimeError):
            srv.start()
        with pytest.raises(RuntimeError):
            with srv:
                pass
        with connect(srv.address, timeout=WAIT) as sock:
            sock.sendall(b"still here")
            assert recv_exactly(sock, 10, WAIT) == b"still here"


# 2 -------------------------------------------------------------------------------------------
class Keeper(Recorder):
    """Keeps every message it is handed (the view itself and a slice of it); replies b"ok"."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[Any] = []
        self.slices: list[Any] = []

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        self.kept.append(data)
        self.slices.append(data[1:])
        return b"ok"


def _still_reads(view: Any, expected: bytes) -> None:
    """SPEC: a kept view still reads the bytes it was handed, or refuses to be read."""
    try:
        got = bytes(view)
    except ValueError:
        return
    assert got == expected, "a kept message view shows another connection's bytes"


@pytest.mark.parametrize("threshold, size", [(0, 100), (4096, 10 << 10)])
def test_kept_view_never_shows_another_connections_bytes(threshold: int, size: int) -> None:
    handler = Keeper()
    payload_a = b"A" * (size - 16) + b"<marker-A-12345>"
    payload_b = b"B" * (size - 16) + b"<marker-B-67890>"
    with serve(handler, view_threshold=threshold) as srv:
        with connect(srv.address, timeout=WAIT) as a:
            a.sendall(payload_a)
            assert recv_exactly(a, 2, WAIT) == b"ok"
            wait_until(lambda: sum(len(k) for k in handler.kept) >= size, WAIT, "A's bytes")
            n_a = len(handler.kept)
            assert all(isinstance(k, memoryview) for k in handler.kept)
            expected_a = [bytes(k) for k in handler.kept]   # what on_message was handed
            assert b"".join(expected_a) == payload_a
            with connect(srv.address, timeout=WAIT) as b:
                def b_received() -> int:
                    return sum(len(k) for k in handler.kept[n_a:])

                for turn in range(1, 4):                    # several turns over the same memory
                    b.sendall(payload_b)
                    want = turn * size
                    wait_until(lambda: b_received() >= want, WAIT, "B's bytes")  # noqa: B023
            # A itself sends more, on the same connection (its own read buffer reused)
            a.sendall(payload_b)
            wait_until(lambda: sum(len(k) for k in handler.kept[n_a:]) >= 4 * size, WAIT,
                       "A's second message")
        for view, sl, expected in zip(handler.kept[:n_a], handler.slices[:n_a], expected_a):
            _still_reads(view, expected)
            _still_reads(sl, expected[1:])


# 3 -------------------------------------------------------------------------------------------
def test_reply_returned_with_close_is_sent_then_fin() -> None:
    class CloseWithReply(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            conn.close()
            return b"goodbye"

    handler = CloseWithReply()
    with serve(handler) as srv:
        with connect(srv.address, timeout=WAIT) as sock:
            sock.sendall(b"bye?")
            assert recv_to_eof(sock, WAIT) == b"goodbye"   # a reset would raise here
            conn = handler.wait_connected(1)[0]
            assert handler.wait_closed(conn, WAIT) is None


def test_reply_returned_with_shutdown_write_is_sent_then_fin_without_abort() -> None:
    class ShutWithReply(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            conn.shutdown_write()
            return b"last words"

    handler = ShutWithReply()
    with serve(handler) as srv:
        sock = connect(srv.address, timeout=WAIT)
        with sock:
            sock.sendall(b"req")
            assert recv_to_eof(sock, WAIT) == b"last words"
            conn = handler.wait_connected(1)[0]
            assert handler.close_count(conn) == 0       # reading goes on until the peer closes
        assert handler.wait_closed(conn, WAIT) is None  # the client's FIN: a clean close
    assert handler.close_count(conn) == 1


# 4 -------------------------------------------------------------------------------------------
def test_send_of_a_ring_view_is_copied_before_the_ring_is_reused() -> None:
    class RingReuse(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.ring = RingBuffer(8192)
            self.errors: list[BaseException] = []

        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            ring = self.ring
            ring.write(b"x" * 4096)
            conn.send(ring.peek(4096))
            try:
                ring.retrieve_all()
                ring.write(b"y" * 4096)
            except BaseException as exc:     # noqa: BLE001 - reported below
                self.errors.append(exc)
            return None

    handler = RingReuse()
    with serve(handler) as srv:
        with connect(srv.address, timeout=WAIT) as sock:
            sock.sendall(b"go")
            assert recv_exactly(sock, 4096, WAIT) == b"x" * 4096
    assert handler.errors == []


# 5 -------------------------------------------------------------------------------------------
def test_close_with_unread_input_lingers_so_the_reply_arrives() -> None:
    class ByeFirst(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            if conn.context is None:
                conn.context = "done"
                conn.close()
                return b"BYE\n"
            return None

    handler = ByeFirst()
    with serve(handler) as srv:
        sock = connect(srv.address, timeout=WAIT)
        stop_sending = threading.Event()

        def flood() -> None:
            chunk = b"z" * 65536
            try:
                for _ in range(16):             # 1 MiB
                    if stop_sending.is_set():
                        return
                    sock.sendall(chunk)
            except OSError:
                pass

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        try:
            got = b""
            while len(got) < 4:
                chunk = sock.recv(4 - len(got))       # must not be ConnectionResetError
                assert chunk, f"EOF after {got!r}, before BYE"
                got += chunk
            assert got == b"BYE\n"
        finally:
            stop_sending.set()
            sock.settimeout(0.5)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sender.join(WAIT)
            sock.close()
        assert not sender.is_alive()


# 6 -------------------------------------------------------------------------------------------
class LateReply(Recorder):
    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        conn.loop.run_after(0.2, conn.send, b"late")
        return None


def test_on_eof_true_keeps_a_half_closed_connection_open_for_sending() -> None:
    class KeepOpen(LateReply):
        def on_eof(self, conn: Connection) -> bool:
            return True

    handler = KeepOpen()
    with serve(handler) as srv:
        with connect(srv.address, timeout=WAIT) as sock:
            sock.sendall(b"req")
            sock.shutdown(socket.SHUT_WR)
            assert recv_exactly(sock, 4, WAIT) == b"late"
            conn = handler.wait_connected(1)[0]
            assert conn.connected
            conn.close()
            assert recv_to_eof(sock, WAIT) == b""
            assert handler.wait_closed(conn, WAIT) is None


def test_default_on_eof_closes_after_the_fin() -> None:
    handler = LateReply()
    with serve(handler) as srv:
        with connect(srv.address, timeout=WAIT) as sock:
            sock.sendall(b"req")
            sock.shutdown(socket.SHUT_WR)
            assert recv_to_eof(sock, WAIT) == b""
            conn = handler.wait_connected(1)[0]
            assert handler.wait_closed(conn, WAIT) is None
        time.sleep(0.3)          # the timer fires on a closed connection: no crash, no reply


# 7 -------------------------------------------------------------------------------------------
def test_peer_addr_in_on_close_after_a_reset() -> None:
    class AddrAtClose(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.addrs: list[Any] = []

        def on_close(self, conn: Connection, error: BaseException | None) -> None:
            self.addrs.append((conn.peer_addr, conn.local_addr))   # first read: after close
            super().on_close(conn, error)

    handler = AddrAtClose()
    with serve(handler) as srv:
        sock = connect(srv.address, timeout=WAIT)
        client_addr = sock.getsockname()
        conn = handler.wait_connected(1)[0]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()                                    # RST
        assert isinstance(handler.wait_closed(conn, WAIT), OSError)
        assert handler.addrs[0][0] == client_addr
        assert handler.addrs[0][1] == srv.address
        assert conn.peer_addr == client_addr


# 8 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply", [42, True, [1, 2], "str"], ids=["int", "bool", "list", "str"])
def test_non_bytes_reply_is_a_typeerror_and_sends_nothing(reply: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    class BadReply(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            return reply

    handler = BadReply()
    caplog.set_level(logging.ERROR, logger="reactor.loop")
    with serve(handler) as srv:
        with connect(srv.address, timeout=WAIT) as sock:
            sock.sendall(b"hello")
            try:
                received = recv_to_eof(sock, WAIT)
            except ConnectionResetError:
                received = b""
            assert received == b"", f"{reply!r} was sent as {received!r}"
            conn = handler.wait_connected(1)[0]
            error = handler.wait_closed(conn, WAIT)
    assert isinstance(error, TypeError), repr(error)
    assert type(reply).__name__ in str(error)
    records = [r for r in caplog.records if r.name == "reactor.loop" and r.levelno >= logging.ERROR]
    assert len(records) == 1, [r.getMessage() for r in records]


# 9 -------------------------------------------------------------------------------------------
def test_stop_while_clients_connect_leaks_no_descriptors() -> None:
    before = open_fds()
    handler = EchoRecorder()
    clients: list[socket.socket] = []
    srv = serve(handler, num_loops=2)
    srv.__enter__()
    address = srv.address
    go = threading.Event()
    done = threading.Event()

    def dial() -> None:
        # Each client closes right after connecting: the server's lingering close (it reads
        # until the peer's FIN, LINGER_DRAIN at most) then ends at once, so stop() is quick.
        try:
            for i in range(200):
                s = socket.socket()
                clients.append(s)
                s.settimeout(WAIT)
                try:
                    s.connect(address)
                except OSError:
                    pass
                s.close()
                if i == 20:
                    go.set()
        finally:
            go.set()
            done.set()

    t = threading.Thread(target=dial, daemon=True)
    t.start()
    assert go.wait(WAIT)
    srv.stop()
    t.join(WAIT)
    assert done.is_set()
    assert srv.connection_count == 0
    assert handler.connected, "no connection was accepted before stop()"
    for s in clients:
        s.close()                   # already closed; the fds are not ours any more
    after = open_fds()
    assert len(after) <= len(before), f"leaked descriptors: {sorted(after - before)}"


# 10 ------------------------------------------------------------------------------------------
def test_send_after_close_from_another_thread_raises_connection_closed() -> None:
    handler = EchoRecorder()
    with serve(handler) as srv:
        with connect(srv.address, timeout=WAIT) as sock:
            conn = handler.wait_connected(1)[0]
            conn.close()                                 # from this (non-loop) thread
            assert closed_by_peer(sock, WAIT)
            assert handler.wait_closed(conn, WAIT) is None
            with pytest.raises(ConnectionClosed):
                conn.send(b"too late")
            with pytest.raises(ConnectionClosed):
                conn.send_raw(b"too late")
