"""reactor.plugins.websocket against the `websockets` library's client and a raw-frame client."""
from __future__ import annotations

import logging
import os
import threading

import pytest
from support import TIMEOUT, EchoRecorder, closed_by_peer, connect, serve, wait_until
from websocket_frames import (ACCEPT, frame, open_ws, read_close, read_frame, read_head, read_response,
                              upgrade_request)
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect as ws_connect

from reactor.plugins import websocket as wsmod
from reactor.plugins import ws_wire
from reactor.plugins.websocket import HttpResponse, WebSocketProtocol, WebSocketState


class WsEcho(EchoRecorder):
    """Echoes messages and records what on_message was given; a few commands test replies."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list = []

    def on_message(self, conn, ctx, data):
        with self.cond:
            self.messages.append((ctx, data))
            self.cond.notify_all()
        if data == "none":
            return None
        if data == "empty-text":
            return ""
        if data == "empty-binary":
            return b""
        if data == "push":      # two sends from another thread, then the reply
            def push():
                conn.send("pushed 1")
                conn.send(b"pushed 2")
            t = threading.Thread(target=push)
            t.start()
            t.join(TIMEOUT)
            return "after push"
        return data


def url(srv, path="/"):
    host, port = srv.address[:2]
    return f"ws://{host}:{port}{path}"


def client(srv, **kwargs):
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("close_timeout", TIMEOUT)
    return ws_connect(url(srv), **kwargs)


# -- with a real client ------------------------------------------------------------------------

@pytest.mark.parametrize("compression", [False, True])
def test_text_binary_large_fragmented_ping_close(compression, no_errors):
    handler = WsEcho()
    mib = 1 << 20
    with serve(handler, protocol=WebSocketProtocol(max_message_size=mib, compression=compression)) as srv:
        with client(srv, max_size=None, compression="deflate" if compression else None) as ws:
            assert bool(ws.protocol.extensions) == compression
            ws.send("héllo wörld ✓")
            assert ws.recv(TIMEOUT) == "héllo wörld ✓"
            ws.send(b"\x00\xff binary")
            assert ws.recv(TIMEOUT) == b"\x00\xff binary"
            big = os.urandom(mib - 16) + b"x" * 16                  # a whole 1 MiB message
            ws.send(big)
            assert ws.recv(TIMEOUT) == big
            ws.send(["frag-", "ment", "ed ✓"])                       # three frames, one message
            assert ws.recv(TIMEOUT) == "frag-mented ✓"
            ws.send([b"a" * 70000, b"b" * 5])
            assert ws.recv(TIMEOUT) == b"a" * 70000 + b"b" * 5
            assert ws.ping(b"are you there").wait(TIMEOUT)
            ws.send("none")                                          # None -> nothing sent
            ws.send("empty-text")
            assert ws.recv(TIMEOUT) == ""
            ws.send("empty-binary")
            assert ws.recv(TIMEOUT) == b""
            ws.close(4001, "bye")
        assert ws.close_code == 4001                                 # the server echoed the code
        conn = handler.wait_connected(1)[0]
        assert handler.wait_closed(conn) is None
    kinds = [type(data) for _, data in handler.messages]
    assert kinds[:5] == [str, bytes, bytes, str, bytes]
    assert all(ctx is None for ctx, _ in handler.messages)


def test_send_from_another_thread_keeps_order_and_types(no_errors):
    with serve(WsEcho(), protocol=WebSocketProtocol()) as srv, client(srv) as ws:
        ws.send("push")
        got = [ws.recv(TIMEOUT) for _ in range(3)]
        # sends from one other thread keep their order; the reply is not ordered against them
        assert [m for m in got if m != "after push"] == ["pushed 1", b"pushed 2"]
        assert "after push" in got


@pytest.mark.parametrize("compression", [False, True])
def test_oversized_message_closes_1009_and_server_keeps_serving(compression, no_errors):
    with serve(WsEcho(), protocol=WebSocketProtocol(max_message_size=1000, compression=compression)) as srv:
        opts = {"compression": "deflate" if compression else None}
        with client(srv, **opts) as ws:
            ws.send(b"x" * 1000)
            assert ws.recv(TIMEOUT) == b"x" * 1000
            ws.send(b"y" * 1001)                                      # one frame too big
            with pytest.raises(ConnectionClosedError):
                ws.recv(TIMEOUT)
        assert ws.close_code == 1009
        with client(srv, **opts) as ws:
            with pytest.raises(ConnectionClosedError):
                # fragments add up too big; the client may still be sending its closing (empty,
                # final) fragment when the 1009 arrives, so send() may be what raises
                ws.send(["a" * 600, "b" * 600])
                ws.recv(TIMEOUT)
        assert ws.close_code == 1009
        with client(srv, **opts) as ws:                               # others still served
            ws.send("still here")
            assert ws.recv(TIMEOUT) == "still here"
    assert any("1009" in r.getMessage() for r in no_errors.records if r.levelno == logging.WARNING)


def test_subprotocol_choice_and_on_request_reject(no_errors):
    seen = []

    def on_request(conn, request):
        seen.append((request.path, request.header("x-token"), request.subprotocols))
        if request.header("x-token") != "secret":
            return 403
        return None

    proto = WebSocketProtocol(subprotocols=("chat.v2", "chat.v1"), on_request=on_request)
    with serve(WsEcho(), protocol=proto) as srv:
        with ws_connect(url(srv, "/room?x=1"), additional_headers={"X-Token": "secret"},
                        subprotocols=["chat.v1", "chat.v2"], open_timeout=TIMEOUT) as ws:
            assert ws.subprotocol == "chat.v1"                         # the client's first choice we speak
            ws.send("hi")
            assert ws.recv(TIMEOUT) == "hi"
        with ws_connect(url(srv), additional_headers={"X-Token": "secret"}, subprotocols=["other"],
                        open_timeout=TIMEOUT) as ws:
            assert ws.subprotocol is None
        with pytest.raises(InvalidStatus) as info:
            ws_connect(url(srv), open_timeout=TIMEOUT)
        assert info.value.response.status_code == 403
    assert seen[0] == ("/room", "secret", ["chat.v1", "chat.v2"])


# -- handshake edge cases, raw -----------------------------------------------------------------

def test_handshake_accept_token_and_pipelined_frame(no_errors):
    with serve(WsEcho(), protocol=WebSocketProtocol()) as srv, connect(srv.address) as sock:
        sock.sendall(upgrade_request() + frame("sent with the request", opcode=1))
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ") and f"Sec-WebSocket-Accept: {ACCEPT}".encode() in head
        assert read_frame(sock) == (0x81, b"sent with the request")


@pytest.mark.parametrize("change,status", [
    ({"drop": ("Sec-WebSocket-Key",)}, b"400"),
    ({"headers": {"Sec-WebSocket-Version": "8"}}, b"426"),
    ({"drop": ("Host",)}, b"400"),
])
def test_handshake_rejects_bad_upgrades(change, status, no_errors):
    with serve(WsEcho(), protocol=WebSocketProtocol()) as srv, connect(srv.address) as sock:
        sock.sendall(upgrade_request(**change))
        head, _ = read_response(sock)
        assert head.split(b" ")[1] == status
        if status == b"426":
            assert b"Sec-WebSocket-Version: 13" in head
        assert closed_by_peer(sock)


def test_plain_http_request_goes_to_on_request(no_errors):
    def on_request(conn, request):
        if request.path == "/":
            return HttpResponse(200, "<h1>page</h1>", content_type="text/html")
        return None

    with serve(WsEcho(), protocol=WebSocketProtocol(on_request=on_request)) as srv:
        with connect(srv.address) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: text/html" in head
            assert body == b"<h1>page</h1>"
            assert closed_by_peer(sock)
        with connect(srv.address) as sock:
            sock.sendall(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_head(sock).startswith(b"HTTP/1.1 426 ")


def test_garbage_and_oversized_request_heads_close(no_errors):
    with serve(WsEcho(), protocol=WebSocketProtocol()) as srv:
        with connect(srv.address) as sock:
            sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
            assert read_response(sock)[0].startswith(b"HTTP/1.1 400 ")
            assert closed_by_peer(sock)
        with connect(srv.address) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * (wsmod.MAX_REQUEST_HEAD + 10))
            assert read_response(sock)[0].startswith(b"HTTP/1.1 431 ")
            assert closed_by_peer(sock)


def test_send_before_upgrade_follows_the_101(no_errors):
    class Greeter(WsEcho):
        def on_connect(self, conn):
            super().on_connect(conn)
            conn.send("welcome")          # on_connect runs at TCP accept, before the upgrade

    with serve(Greeter(), protocol=WebSocketProtocol()) as srv, connect(srv.address) as sock:
        sock.sendall(upgrade_request())
        assert read_head(sock).startswith(b"HTTP/1.1 101 ")
        assert read_frame(sock) == (0x81, b"welcome")


# -- protocol violations, raw ------------------------------------------------------------------

VIOLATIONS = {
    "unmasked": (frame(b"abc", mask=False), 1002),
    "reserved bit": (frame(b"abc", rsv=4), 1002),
    "bad opcode": (frame(b"abc", opcode=3), 1002),
    "lone continuation": (frame(b"abc", opcode=0), 1002),
    "fragmented ping": (frame(b"p", opcode=9, fin=False), 1002),
    "long ping": (frame(b"p" * 126, opcode=9), 1002),
    "non-minimal length": (bytes((0x82, 0x80 | 126, 0, 5)) + b"\0\0\0\0" + b"hello", 1002),
    "bad utf-8": (frame(b"\xff\xfe", opcode=1), 1007),
    "bad utf-8 in first fragment": (frame(b"ok\xc3\x28", opcode=1, fin=False), 1007),
    "bad close code": (frame(b"\x03\xe7", opcode=8), 1002),
    "text inside fragmented binary": (frame(b"a", fin=False) + frame(b"b", opcode=1), 1002),
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_violation_closes_with_code_after_delivering_earlier_messages(name, no_errors):
    bad, code = VIOLATIONS[name]
    handler = WsEcho()
    with serve(handler, protocol=WebSocketProtocol()) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            # a whole message, a ping, then the bad frame, all in one segment
            sock.sendall(frame("before", opcode=1) + frame(b"p1", opcode=9) + bad)
            assert read_frame(sock) == (0x81, b"before")
            assert read_frame(sock) == (0x8A, b"p1")
            assert read_close(sock) == code
            assert closed_by_peer(sock)
        with client(srv) as ws:
            ws.send("next client")
            assert ws.recv(TIMEOUT) == "next client"
    assert [d for _, d in handler.messages][:1] == ["before"]
    warnings = [r.getMessage() for r in no_errors.records if r.levelno == logging.WARNING]
    assert any(str(code) in w for w in warnings)


def test_utf8_checked_frame_by_frame_before_message_ends(no_errors):
    with serve(WsEcho(), protocol=WebSocketProtocol()) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            sock.sendall(frame("fine ", opcode=1, fin=False))
            sock.sendall(frame(b"\xed\xa0\x80", opcode=0, fin=False))     # a surrogate: never valid
            assert read_close(sock) == 1007                            # the final frame never came


def test_peer_close_without_code_is_answered_and_closes(no_errors):
    handler = WsEcho()
    with serve(handler, protocol=WebSocketProtocol()) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            sock.sendall(frame(b"", opcode=8))
            assert read_frame(sock) == (0x88, b"")
            assert closed_by_peer(sock)
        conn = handler.wait_connected(1)[0]
        assert handler.wait_closed(conn) is None


def test_oversized_frame_refused_from_its_header(no_errors):
    with serve(WsEcho(), protocol=WebSocketProtocol(max_message_size=100)) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            sock.sendall(frame(b"", opcode=2, length=1 << 40)[:14])       # header only: 1 TiB announced
            assert read_close(sock) == 1009
            assert closed_by_peer(sock)


# -- unit level --------------------------------------------------------------------------------

def test_unmask_implementations_agree():
    for n in (0, 1, 3, 4, 5, 125, 126, 1000, 65537):
        data, key = os.urandom(n), os.urandom(4)
        expected = bytes(b ^ key[i % 4] for i, b in enumerate(data))
        assert ws_wire.unmask_python(memoryview(data), memoryview(key)) == expected
        assert bytes(ws_wire.unmask(memoryview(data), memoryview(key))) == expected


def test_state_and_packet_after_close():
    class Conn:
        protocol_state = None

    proto = WebSocketProtocol(handshake_timeout=None)      # no loop to arm a deadline on
    conn = Conn()
    proto.connection_made(conn)
    assert isinstance(conn.protocol_state, WebSocketState) and not conn.protocol_state.open
    proto.connection_lost(conn, None)
    assert proto.packet(conn, "late") == b""


def test_server_frames_use_minimal_lengths():
    assert ws_wire.build_frame(0x82, b"a" * 125)[:2] == b"\x82\x7d"
    assert ws_wire.build_frame(0x82, b"a" * 126)[:4] == b"\x82\x7e\x00\x7e"
    assert ws_wire.build_frame(0x81, b"a" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
    assert ws_wire.close_frame(1000, "x") == b"\x88\x03\x03\xe8x"


def test_bad_max_message_size():
    with pytest.raises(ValueError):
        WebSocketProtocol(max_message_size=0)


def test_wait_helper_is_bounded():
    # the handler counts connections; a closed client is noticed within the bound
    handler = WsEcho()
    with serve(handler, protocol=WebSocketProtocol()) as srv:
        with client(srv):
            wait_until(lambda: srv.connection_count == 1, what="one connection")
        wait_until(lambda: srv.connection_count == 0, what="connection closed")
