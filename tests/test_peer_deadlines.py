"""Goodbyes and deadlines: TLS close_notify in both directions, the TLS handshake deadline, the
frame deadline, the write limit for a peer that never reads, and the bound on stop()."""
from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any

import pytest
from support import TIMEOUT, EchoRecorder, Recorder, connect, recv_exactly, serve
from test_tls import DATA, server_context

from reactor import Connection, Handler, PeerTimeout
from reactor.codec import LengthFieldProtocol, LineProtocol


def _client_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(DATA / "localhost.crt"))


def _pump(sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
    """Finish a client handshake over a plain socket with memory BIOs."""
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            assert data, "server closed during the handshake"
            incoming.write(data)
    sock.sendall(outgoing.read())


def trickled_until_closed(handler: Recorder, conn: Connection, sock: socket.socket, pieces: Any,
                          every: float) -> BaseException | None:
    """Send `pieces` one by one, `every` seconds apart, until the server closes `conn`; its error."""
    stop = threading.Event()

    def trickle() -> None:
        for piece in pieces:
            if stop.wait(every):
                return
            try:
                sock.send(piece)
            except OSError:
                return
    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        return handler.wait_closed(conn)
    finally:
        stop.set()
        t.join(TIMEOUT)


def test_tls_request_and_close_notify_in_one_flight_get_the_reply_then_close_notify(
        caplog: pytest.LogCaptureFixture) -> None:
    """`openssl s_client` at end of input: the last request and close_notify arrive together;
    the reply must still come, then the server's close_notify, with no handler error."""
    handler = EchoRecorder()
    with caplog.at_level(logging.WARNING, logger="reactor"):
        with serve(handler, ssl=server_context(), protocol=LineProtocol()) as srv:
            sock = connect(srv.address)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = _client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
            _pump(sock, obj, incoming, outgoing)
            obj.write(b"LAST REQUEST\n")
            try:
                obj.unwrap()                      # queue our close_notify behind the request
            except ssl.SSLWantReadError:
                pass
            sock.sendall(outgoing.read())         # one flight: request + close_notify
            plain = b""
            closed = False
            sock.settimeout(TIMEOUT)
            while not closed:
                data = sock.recv(65536)
                if not data:
                    break
                incoming.write(data)
                while True:
                    try:
                        chunk = obj.read(65536)
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        closed = True
                        break
                    if not chunk:
                        closed = True
                        break
                    plain += chunk
            sock.close()
    assert plain == b"LAST REQUEST\n"
    assert closed, "no close_notify from the server"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_tls_server_close_sends_close_notify() -> None:
    class ByeAfterReply(Handler):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            conn.close()
            return b"bye"                         # LineProtocol adds the newline

    with serve(ByeAfterReply(), ssl=server_context(), protocol=LineProtocol()) as srv:
        raw = connect(srv.address)
        sock = _client_context().wrap_socket(raw, server_hostname="localhost",
                                              suppress_ragged_eofs=False)
        with sock:
            sock.sendall(b"hi\n")
            assert recv_exactly(sock, 4) == b"bye\n"
            assert sock.recv(100) == b""          # close_notify: not SSLEOFError (a truncation)


def test_tls_handshake_that_never_comes_is_closed_by_its_deadline() -> None:
    handler = Recorder()
    with serve(handler, ssl=server_context(), handshake_timeout=0.2) as srv:
        with connect(srv.address) as sock:
            (conn,) = handler.wait_connected(1)
            sock.sendall(b"\x16\x03\x01")         # the start of a ClientHello, then nothing
            error = handler.wait_closed(conn)
            assert isinstance(error, PeerTimeout) and error.reason == "handshake_timeout"
            sock.settimeout(TIMEOUT)
            assert sock.recv(100) == b""


def test_a_frame_trickled_byte_by_byte_is_closed_by_frame_timeout() -> None:
    """A header announcing a big frame, then a byte at a time: idle_timeout never fires (the
    peer is never idle), the frame deadline does."""
    handler = EchoRecorder()
    with serve(handler, protocol=LengthFieldProtocol(), frame_timeout=0.3, idle_timeout=5) as srv:
        with connect(srv.address) as sock:
            (conn,) = handler.wait_connected(1)
            sock.sendall(((8 << 20) - 8).to_bytes(4, "big") + b"x")   # 8 MiB - 4 announced
            error = trickled_until_closed(handler, conn, sock, iter(lambda: b"x", None), 0.05)
    assert isinstance(error, PeerTimeout) and error.reason == "frame_timeout"


def test_a_peer_that_never_reads_is_dropped_at_write_limit_and_pending_write_counts_it() -> None:
    """A broadcast keeps sending to a client that never reads: its output would grow without
    bound; past write_limit the connection is dropped (OutputLimitExceeded)."""
    handler = Recorder()
    with serve(handler, write_high_water=64 << 10, write_limit=1 << 20) as srv:
        with connect(srv.address, rcvbuf=4096):
            (conn,) = handler.wait_connected(1)
            chunk = b"b" * (64 << 10)
            seen = 0
            deadline = time.monotonic() + TIMEOUT
            with pytest.raises(ConnectionError):
                while time.monotonic() < deadline:
                    conn.send(chunk)              # from this thread, like a timer broadcast
                    seen = max(seen, conn.pending_write)
                    time.sleep(0.001)
            error = handler.wait_closed(conn)
    assert type(error).__name__ == "OutputLimitExceeded"
    assert seen > 0


def test_a_thread_sending_in_a_tight_loop_does_not_starve_other_connections() -> None:
    handler = EchoRecorder()
    stop = threading.Event()
    with serve(handler) as srv:
        with connect(srv.address, rcvbuf=1 << 20) as flooded, connect(srv.address) as other:
            conns = handler.wait_connected(2)
            target = conns[0]

            def flood() -> None:
                while not stop.is_set():
                    try:
                        target.send(b"f" * 64)
                    except ConnectionError:
                        return

            t = threading.Thread(target=flood, daemon=True)
            t.start()
            try:
                for i in range(20):                # the other client is served all along
                    other.sendall(b"ping%02d" % i)
                    assert recv_exactly(other, 6) == b"ping%02d" % i
            finally:
                stop.set()
                t.join(TIMEOUT)
            del flooded


def test_stop_with_no_timeout_is_bounded_against_a_slow_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader taking a little every while always makes progress; stop(None) still ends at
    STOP_LIMIT (shortened here) instead of waiting forever."""
    import reactor.closing
    monkeypatch.setattr(reactor.closing, "STOP_LIMIT", 0.5)
    handler = Recorder()
    srv = serve(handler)
    srv.__enter__()
    sock = connect(srv.address, rcvbuf=4096)
    (conn,) = handler.wait_connected(1)
    conn.send(b"s" * (8 << 20))
    stop = threading.Event()

    def slow_reader() -> None:
        while not stop.wait(0.05):
            try:
                if not sock.recv(1024):
                    return
            except OSError:
                return
    t = threading.Thread(target=slow_reader, daemon=True)
    t.start()
    started = time.monotonic()
    srv.stop()
    took = time.monotonic() - started
    stop.set()
    t.join(TIMEOUT)
    sock.close()
    assert srv.connection_count == 0
    assert took < TIMEOUT, took                  # bounded (by 0.5 s here), not forever


def test_a_tls_client_hello_trickled_a_byte_at_a_time_is_closed_by_its_deadline() -> None:
    """Each byte is progress, so idle_timeout never fires; the handshake deadline is fixed
    from accept, so it does."""
    handler = Recorder()
    hello = bytearray(b"\x16\x03\x01\x02\x00" + b"\x01" * 512)   # a record header announcing 512 B
    with serve(handler, ssl=server_context(), handshake_timeout=0.3, idle_timeout=5) as srv:
        with connect(srv.address) as sock:
            (conn,) = handler.wait_connected(1)
            error = trickled_until_closed(handler, conn, sock, (bytes([b]) for b in hello), 0.02)
    assert isinstance(error, PeerTimeout) and error.reason == "handshake_timeout"


def test_pending_write_counts_websocket_frames_held_before_the_upgrade() -> None:
    from reactor.plugins.websocket import WebSocketProtocol
    seen: list[int] = []

    class Greeter(Recorder):
        def on_connect(self, conn: Connection) -> None:
            super().on_connect(conn)
            conn.send("hello")                  # before the upgrade: held by the protocol
            seen.append(conn.pending_write)

    handler = Greeter()
    with serve(handler, protocol=WebSocketProtocol()) as srv, connect(srv.address):
        handler.wait_connected(1)
    assert seen and seen[0] >= len("hello") + 2     # the frame: 2-byte header + payload
