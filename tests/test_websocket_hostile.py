"""Hostile WebSocket clients over loopback, each bounded in bytes and time: endless empty
fragments, tiny fragments, invalid UTF-8 in the middle of a frame, undecodable header bytes,
and request heads that never end (slowloris)."""
from __future__ import annotations

import logging
import select
import socket
import time
import tracemalloc

import pytest
from support import TIMEOUT, EchoRecorder, Recorder, closed_by_peer, connect, recv_to_eof, serve, wait_until
from websocket_frames import frame, mask_bytes, open_ws, read_close, read_frame, read_head, read_response

from reactor import PeerTimeout
from reactor.plugins.websocket import MAX_REQUEST_HEAD, WebSocketProtocol


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name.startswith("reactor")]


class Sizes(Recorder):
    """Keeps only the type and length of each message (so the test's memory is the server's)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[type, int]] = []

    def on_message(self, conn, ctx, data):
        with self.cond:
            self.seen.append((type(data), len(data)))
            self.cond.notify_all()
        return f"{type(data).__name__} {len(data)}"


# -- 1. fragments ------------------------------------------------------------------------------

def test_endless_empty_continuations_close_1009(no_errors):
    """Empty FIN=0 continuations add no bytes, so max_message_size never tripped; each one is
    a frame, and frames per message are bounded (max_fragments, default 1024)."""
    with serve(EchoRecorder(), protocol=WebSocketProtocol()) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            empty = frame(b"", opcode=0, fin=False)
            assert len(empty) == 6
            try:
                sock.sendall(frame("a", opcode=1, fin=False) + empty * 2000)      # 12 KB, bounded
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert read_close(sock) == 1009
            assert closed_by_peer(sock)
    assert any("1009" in w and "1024 frames" in w for w in warnings(no_errors))


def test_max_fragments_is_exact(no_errors):
    handler = Sizes()
    with serve(handler, protocol=WebSocketProtocol(max_fragments=3)) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            sock.sendall(frame("a", opcode=1, fin=False) + frame("b", opcode=0, fin=False)
                         + frame("c", opcode=0) + frame(b"ping", opcode=9))
            assert read_frame(sock) == (0x81, b"str 3")              # 3 frames: delivered
            assert read_frame(sock) == (0x8A, b"ping")
            sock.sendall(frame(b"1", fin=False) + frame(b"2", opcode=0, fin=False)
                         + frame(b"", opcode=9)                            # control frames don't count
                         + frame(b"3", opcode=0, fin=False) + frame(b"4", opcode=0))
            assert read_frame(sock) == (0x8A, b"")
            assert read_close(sock) == 1009                           # the 4th frame
    assert handler.seen == [(str, 3)]


def test_tiny_fragments_cost_memory_in_proportion_to_their_bytes(no_errors):
    """A 128 KiB message in 2-byte fragments (65536 frames) is reassembled into one buffer:
    the server's peak allocation is a few times the message, not ~20x as with a list of
    2-byte bytes objects."""
    size = 128 << 10
    handler = Sizes()
    pieces = [frame(b"ab", opcode=2 if i == 0 else 0, fin=i == size // 2 - 1) for i in range(size // 2)]
    wire = b"".join(pieces)
    del pieces
    with serve(handler, protocol=WebSocketProtocol(max_fragments=size)) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            tracemalloc.start()
            try:
                base, _ = tracemalloc.get_traced_memory()
                sock.sendall(wire)
                assert read_frame(sock) == (0x81, f"bytes {size}".encode())
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert handler.seen == [(bytes, size)]
    assert peak - base < 4 * size, f"{peak - base} bytes allocated for a {size}-byte message"


def test_bad_max_fragments():
    with pytest.raises(ValueError, match="max_fragments"):
        WebSocketProtocol(max_fragments=0)


# -- 3. invalid UTF-8 fails fast ----------------------------------------------------------------

@pytest.mark.parametrize("prefix", [b"valid text, then \xff", b"a surrogate: \xed\xa0", b"\xc0\xaf overlong"])
def test_invalid_utf8_closes_1007_before_the_frame_ends(prefix, no_errors):
    """A text frame announcing 1 MB, of which only a prefix that cannot begin valid UTF-8 is
    sent: the server closes with 1007 without waiting for the rest."""
    with serve(EchoRecorder(), protocol=WebSocketProtocol(max_message_size=2 << 20)) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            head = bytes((0x81, 0x80 | 127)) + (1 << 20).to_bytes(8, "big")
            key = b"\x01\x02\x03\x04"
            sock.sendall(head + key + mask_bytes(prefix, key))
            assert read_close(sock) == 1007
            assert closed_by_peer(sock)
    assert any("1007" in w for w in warnings(no_errors))


def test_utf8_sequence_split_across_fragments_and_reads_is_fine(no_errors):
    with serve(EchoRecorder(), protocol=WebSocketProtocol()) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            text = "é✓😀".encode()
            wire = (frame(text[:1], opcode=1, fin=False) + frame(text[1:5], opcode=0, fin=False)
                    + frame(text[5:], opcode=0))
            for i in range(0, len(wire), 3):
                sock.sendall(wire[i:i + 3])
                time.sleep(0.002)
            assert read_frame(sock) == (0x81, text)
            big = ("✓" * 50000).encode()
            wire = frame(big, opcode=1)
            sock.sendall(wire[:1001])                                  # stops inside a character
            time.sleep(0.05)
            sock.sendall(wire[1001:])
            assert read_frame(sock) == (0x81, big)


# -- 4. undecodable header bytes ----------------------------------------------------------------

def raw_request(extra: bytes = b"", host: bytes = b"localhost") -> bytes:
    return (b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")


@pytest.mark.parametrize("request_bytes", [
    raw_request(host=b"h\xe9st"),
    raw_request(b"Sec-WebSocket-Protocol: chat\xff\r\n"),
    raw_request(b"Sec-WebSocket-Extensions: permessage-deflate\xe9\r\n"),
    raw_request().replace(b"Connection: Upgrade", b"Connection: Upgrade, \xe9"),
], ids=["host", "subprotocol", "extensions", "connection"])
def test_undecodable_header_gets_400_and_one_warning(request_bytes, caplog):
    caplog.set_level(logging.DEBUG, logger="reactor")
    with serve(EchoRecorder(), protocol=WebSocketProtocol(compression=True)) as srv:
        with connect(srv.address) as sock:
            sock.sendall(request_bytes)
            head, _ = read_response(sock)
            assert head.startswith(b"HTTP/1.1 400 ")
            assert closed_by_peer(sock)
        wait_until(lambda: srv.connection_count == 0, what="the connection closed")
    records = [r for r in caplog.records if r.name.startswith("reactor") and r.levelno >= logging.WARNING]
    assert [r.levelno for r in records] == [logging.WARNING], [r.getMessage() for r in records]
    assert "bad WebSocket upgrade" in records[0].getMessage()
    assert records[0].exc_info is None


# -- 5. slowloris: the upgrade has a deadline ---------------------------------------------------

def test_request_head_that_never_ends_is_closed_at_the_deadline(no_errors):
    """12 KiB of head, then a byte every 50 ms: every byte is activity, so idle_timeout never
    fires; the handshake deadline does (0.3 s here, 10 s by default), while the client is
    still dripping (at most 60 bytes)."""
    handler = Recorder()
    proto = WebSocketProtocol(handshake_timeout=0.3)
    with serve(handler, protocol=proto, idle_timeout=0.5) as srv:
        with connect(srv.address) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * (12 << 10))
            answer, closed = b"", False
            for _ in range(60):
                try:
                    sock.sendall(b"a")
                    if select.select([sock], [], [], 0.05)[0]:
                        answer = sock.recv(4096)
                        closed = True
                        break
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
            assert closed, "still open after 60 bytes dripped over 3 s"
            assert answer == b"", "nothing is answered to a request that never ended"
        conn = handler.wait_connected(1)[0]
        error = handler.wait_closed(conn)
        assert isinstance(error, PeerTimeout) and error.reason == "handshake_timeout", error
        wait_until(lambda: srv.connection_count == 0, what="the connection closed")


def test_connection_that_sends_nothing_is_closed_at_the_deadline(no_errors):
    handler = Recorder()
    with serve(handler, protocol=WebSocketProtocol(handshake_timeout=0.3)) as srv:
        with connect(srv.address) as sock:
            assert recv_to_eof(sock, timeout=TIMEOUT) == b""
        error = handler.wait_closed(handler.wait_connected(1)[0])
        assert isinstance(error, PeerTimeout) and error.reason == "handshake_timeout", error


def test_deadline_does_not_touch_upgraded_connections(no_errors):
    with serve(EchoRecorder(), protocol=WebSocketProtocol(handshake_timeout=0.3)) as srv:
        sock, _ = open_ws(srv.address)
        with sock:
            time.sleep(0.6)                                            # twice the deadline
            sock.sendall(frame(b"still open"))
            assert read_frame(sock) == (0x82, b"still open")


def test_no_deadline_when_disabled(no_errors):
    with serve(EchoRecorder(), protocol=WebSocketProtocol(handshake_timeout=None)) as srv:
        with connect(srv.address) as sock:
            request = raw_request()
            sock.sendall(request[:20])
            time.sleep(0.5)
            sock.sendall(request[20:])
            assert read_head(sock).startswith(b"HTTP/1.1 101 ")


def test_head_over_the_cap_while_dripping_gets_431(no_errors):
    with serve(EchoRecorder(), protocol=WebSocketProtocol()) as srv:
        with connect(srv.address) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_REQUEST_HEAD - 100))
            try:
                for _ in range(40):
                    sock.sendall(b"b" * 10)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert read_response(sock)[0].startswith(b"HTTP/1.1 431 ")


def test_bad_handshake_timeout():
    with pytest.raises(ValueError, match="handshake_timeout"):
        WebSocketProtocol(handshake_timeout=0)
