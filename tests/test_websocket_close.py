"""A WebSocket the server closes itself says goodbye with a close frame (Protocol.closing):
1000 for conn.close() and the idle timeout, 1001 "going away" for server.stop(); nothing before
the upgrade, and no second close frame after one was already sent."""
from __future__ import annotations

import threading

import pytest
from support import TIMEOUT, EchoRecorder, closed_by_peer, connect, recv_to_eof, serve, wait_until
from websocket_frames import FakeConn, drive, frame, open_ws, read_close, read_frame, upgrade_request
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from reactor.plugins.websocket import WebSocketProtocol


class Closer(EchoRecorder):
    """"bye" closes the connection from the handler; "bye later" from another thread."""

    def on_message(self, conn, ctx, data):
        if data == "bye":
            conn.close()
            return None
        if data == "bye later":
            threading.Thread(target=conn.close).start()
            return None
        return data


def client(srv):
    host, port = srv.address
    return ws_connect(f"ws://{host}:{port}/", open_timeout=TIMEOUT, close_timeout=TIMEOUT)


def wait_close_code(ws) -> int | None:
    with pytest.raises(ConnectionClosed):
        ws.recv(TIMEOUT)
    return ws.close_code


@pytest.mark.parametrize("command", ["bye", "bye later"])
def test_conn_close_sends_1000(command, no_errors):
    with serve(Closer(), protocol=WebSocketProtocol()) as srv, client(srv) as ws:
        ws.send("echo")
        assert ws.recv(TIMEOUT) == "echo"
        ws.send(command)
        assert wait_close_code(ws) == 1000


def test_idle_timeout_sends_1000(no_errors):
    with serve(Closer(), protocol=WebSocketProtocol(), idle_timeout=0.3) as srv, client(srv) as ws:
        assert wait_close_code(ws) == 1000


def test_server_stop_sends_1001(no_errors):
    srv = serve(Closer(), protocol=WebSocketProtocol())
    with srv, client(srv) as ws:
        ws.send("echo")
        assert ws.recv(TIMEOUT) == "echo"
        srv.stop(timeout=TIMEOUT)
        assert wait_close_code(ws) == 1001


def test_server_goodbye_on_the_wire(no_errors):
    """Raw: the close frame arrives, then the FIN; after it nothing more is sent."""
    handler = Closer()
    with serve(handler, protocol=WebSocketProtocol()) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            sock.sendall(frame("bye", opcode=1) + frame("after", opcode=1))
            assert read_frame(sock) == (0x88, (1000).to_bytes(2, "big"))
            assert closed_by_peer(sock)


def test_no_close_frame_before_the_upgrade(no_errors):
    """A connection still in its HTTP phase gets no WebSocket frame on stop or idle timeout."""
    srv = serve(Closer(), protocol=WebSocketProtocol())
    with srv:
        with connect(srv.address) as idle, connect(srv.address) as partial:
            partial.sendall(upgrade_request()[:30])
            wait_until(lambda: srv.connection_count == 2, what="two connections")
            srv.stop(timeout=TIMEOUT)
            assert recv_to_eof(idle) == b""
            assert recv_to_eof(partial) == b""
    with serve(Closer(), protocol=WebSocketProtocol(), idle_timeout=0.3) as srv:
        with connect(srv.address) as sock:
            sock.sendall(upgrade_request()[:30])
            assert recv_to_eof(sock) == b""


def test_one_close_frame_only(no_errors):
    """The peer's close is answered once (the echo), and a close after a violation is not
    followed by a second one from the closing hook."""
    with serve(Closer(), protocol=WebSocketProtocol()) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            sock.sendall(frame((4001).to_bytes(2, "big") + b"done", opcode=8))
            assert read_frame(sock) == (0x88, (4001).to_bytes(2, "big"))
            assert recv_to_eof(sock) == b""
        sock, _ = open_ws(srv.address)
        with sock:
            sock.sendall(frame(b"abc", mask=False))
            assert read_close(sock) == 1002
            assert recv_to_eof(sock) == b""


@pytest.mark.parametrize("reason,payload", [("local", b"\x03\xe8"), ("idle", b"\x03\xe8"),
                                            ("stop", b"\x03\xe9server stopping"),
                                            ("handshake_timeout", b"\x03\xe8")])
def test_closing_hook_sends_one_close_frame(reason, payload):
    """The plugin side of Protocol.closing, driven by hand."""
    proto = WebSocketProtocol(handshake_timeout=None)
    conn = FakeConn()
    proto.connection_made(conn)
    proto.closing(conn, reason)                       # before the upgrade: nothing
    assert conn.sent == b""
    drive(proto, conn, [upgrade_request()])
    assert conn.protocol_state.open
    start = len(conn.sent)
    proto.closing(conn, reason)
    assert bytes(conn.sent[start:]) == bytes((0x88, len(payload))) + payload
    assert not conn.protocol_state.open
    proto.closing(conn, reason)                       # once only
    assert proto.packet(conn, "late") == b""          # and nothing after it
    assert bytes(conn.sent[start:]) == bytes((0x88, len(payload))) + payload
