"""permessage-deflate (RFC 7692) in reactor.plugins.websocket: every negotiation parameter with
the `websockets` client, raw compressed frames cut at every position, bounded inflation of a
compression bomb, and frames completed by a lone last byte (the stall behind "echoing 1,000
compressed messages sometimes never finishes")."""
from __future__ import annotations

import itertools
import logging
import os
import random
import socket
import time
import tracemalloc
import zlib

import pytest
from support import TIMEOUT, EchoRecorder, closed_by_peer, connect, serve
from websocket_frames import (Deflater, FakeConn, Inflater, drive, frame, open_ws, read_close,
                              read_frame, read_head, server_frames, upgrade_request)
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect as ws_connect

from reactor.plugins.websocket import WebSocketProtocol, negotiate_deflate

SIZES = (16, 100, 1000, 4096, 65536, 256 << 10)


def payloads(rng: random.Random):
    """Text and binary messages of every size in SIZES, compressible and not."""
    for size in SIZES:
        words = " ".join(str(rng.random()) for _ in range(size // 8 + 1))[:size]
        yield words                                         # text, compresses ~2x
        yield os.urandom(size)                              # incompressible
        yield (os.urandom(97) * (size // 97 + 1))[:size]   # repeats 97 bytes apart


def open_compressed(address, offer: str) -> tuple[socket.socket, bytes]:
    sock = connect(address)
    sock.sendall(upgrade_request(headers={"Sec-WebSocket-Extensions": offer}))
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock, head


def extension_header(head: bytes) -> str | None:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-extensions":
            return value.strip().decode()
    return None


# -- the stall: a frame whose last byte arrives alone ------------------------------------------

@pytest.mark.parametrize("compressed", [False, True])
def test_frame_completed_by_a_lone_last_byte_is_delivered(compressed, no_errors):
    """The old parser returned early when fewer than 2 bytes were buffered, even when they
    finished a frame it had begun: the message waited for bytes a lockstep client never sends."""
    with serve(EchoRecorder(), protocol=WebSocketProtocol(compression=True)) as srv:
        if compressed:
            sock, _ = open_compressed(srv.address, "permessage-deflate")
        else:
            sock, _ = open_ws(srv.address)
        deflater, inflater = Deflater(), Inflater()
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(3):
                data = b"x" * 3000 + os.urandom(3000 + i)
                if compressed:
                    wire = deflater.message(data)
                else:
                    wire = frame(data[:10], fin=False) + frame(data[10:], opcode=0)
                sock.sendall(wire[:-1])
                time.sleep(0.05)                 # two segments: the server reads them apart
                sock.sendall(wire[-1:])
                assert inflater.message(sock) == (2, data)


# -- every negotiation parameter, with a conformant client ---------------------------------------

COMBOS = list(itertools.product([False, True], [False, True], [None, 9, 12, 15], [None, True, 9, 15]))


@pytest.mark.parametrize("server_nct,client_nct,server_bits,client_bits", COMBOS)
def test_websockets_client_with_every_parameter_combination(server_nct, client_nct, server_bits,
                                                            client_bits, no_errors):
    """The websockets client inflates each server message with the window and context it
    asked for, so a server that ignored a parameter fails here (or stalls, as the old one did)."""
    factory = ClientPerMessageDeflateFactory(server_no_context_takeover=server_nct,
                                             client_no_context_takeover=client_nct,
                                             server_max_window_bits=server_bits,
                                             client_max_window_bits=client_bits)
    rng = random.Random(f"{server_nct}{client_nct}{server_bits}{client_bits}")
    with serve(EchoRecorder(), protocol=WebSocketProtocol(compression=True)) as srv:
        host, port = srv.address
        with ws_connect(f"ws://{host}:{port}/", extensions=[factory], compression=None, max_size=None,
                        open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
            answer = ws.response.headers["Sec-WebSocket-Extensions"]
            params = answer.split("; ")
            assert params[0] == "permessage-deflate"
            assert ("server_no_context_takeover" in params) == server_nct
            assert ("client_no_context_takeover" in params) == client_nct
            assert (f"server_max_window_bits={server_bits}" in params) == (server_bits is not None)
            if type(client_bits) is int:
                assert f"client_max_window_bits={client_bits}" in params
            for message in payloads(rng):
                ws.send(message)
                assert ws.recv(TIMEOUT) == message
            for message in ("same message twice " * 50, "same message twice " * 50):
                ws.send(message)
                assert ws.recv(TIMEOUT) == message
            ws.send(["frag", "mented ", "and compressed " * 100])
            assert ws.recv(TIMEOUT) == "fragmented " + "and compressed " * 100


def test_thousand_compressed_64k_messages_echo(no_errors):
    """The workload that used to stall at random: a frame whose last byte came alone.  Each
    message goes out in random pieces (1 byte, a few, the rest), the echo is awaited."""
    rng = random.Random(7)
    blob = os.urandom(1 << 20) + bytes(" ".join(str(rng.random()) for _ in range(1 << 16)), "ascii")
    with serve(EchoRecorder(), protocol=WebSocketProtocol(compression=True)) as srv:
        sock, _ = open_compressed(srv.address, "permessage-deflate")
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deflater, inflater = Deflater(level=1), Inflater()
            for i in range(1000):
                start = rng.randrange(len(blob) - 65536)
                message = blob[start:start + 65536]
                wire = deflater.message(message, pieces=rng.choice((1, 1, 2, 5)))
                cuts = sorted(rng.sample(range(1, len(wire)), 2)) + [len(wire) - 1, len(wire) - 2]
                pos = 0
                for cut in sorted(set(cuts)) + [len(wire)]:
                    sock.sendall(wire[pos:cut])
                    pos = cut
                assert inflater.message(sock) == (2, message), f"message {i}"


# -- raw compressed frames -----------------------------------------------------------------------

@pytest.mark.parametrize("offer,server_bits,server_reset", [
    ("permessage-deflate", 15, False),
    ("permessage-deflate; server_no_context_takeover", 15, True),
    ("permessage-deflate; server_max_window_bits=9", 9, False),
    ("permessage-deflate; server_max_window_bits=\"10\"; server_no_context_takeover", 10, True),
])
def test_server_output_honours_window_and_context(offer, server_bits, server_reset, no_errors):
    """Decoded here with exactly the window (and fresh context) asked for: data repeating
    1000 bytes apart needs a bigger window than 9 bits, and the same message twice is
    compressed against the first unless the server drops its context."""
    with serve(EchoRecorder(), protocol=WebSocketProtocol(compression=True)) as srv:
        sock, head = open_compressed(srv.address, offer)
        with sock:
            deflater, inflater = Deflater(), Inflater(bits=server_bits, reset=server_reset)
            data = os.urandom(1000) * 20
            for _ in range(3):
                sock.sendall(deflater.message(data))
                assert inflater.message(sock) == (2, data)
            sock.sendall(deflater.message("text ✓ " * 300))
            assert inflater.message(sock) == (1, ("text ✓ " * 300).encode())


@pytest.mark.parametrize("client_bits,client_reset", [(9, False), (15, True), (12, True)])
def test_client_window_and_context_parameters(client_bits, client_reset, no_errors):
    offer = f"permessage-deflate; client_max_window_bits={client_bits}"
    if client_reset:
        offer += "; client_no_context_takeover"
    with serve(EchoRecorder(), protocol=WebSocketProtocol(compression=True)) as srv:
        sock, head = open_compressed(srv.address, offer)
        assert f"client_max_window_bits={client_bits}" in extension_header(head)
        with sock:
            deflater, inflater = Deflater(bits=client_bits, reset=client_reset), Inflater()
            for size in SIZES:
                data = (os.urandom(300) * (size // 300 + 1))[:size]
                sock.sendall(deflater.message(data, pieces=3))
                assert inflater.message(sock) == (2, data)


def test_uncompressed_and_bfinal_messages_on_a_compressed_connection(no_errors):
    """RFC 7692: a message may be sent uncompressed (RSV1 clear), and a sender may end its
    deflate stream with BFINAL instead of a sync flush; the next message starts a new stream."""
    with serve(EchoRecorder(), protocol=WebSocketProtocol(compression=True)) as srv:
        sock, _ = open_compressed(srv.address, "permessage-deflate")
        with sock:
            deflater, inflater = Deflater(), Inflater()
            sock.sendall(frame("plain", opcode=1) + frame(b"a", fin=False) + frame(b"b", opcode=0))
            assert inflater.message(sock) == (1, b"plain")
            assert inflater.message(sock) == (2, b"ab")
            sock.sendall(deflater.message(b"ended with bfinal " * 10, finish=True))
            assert inflater.message(sock) == (2, b"ended with bfinal " * 10)
            sock.sendall(deflater.message(b"a new stream " * 10))
            assert inflater.message(sock) == (2, b"a new stream " * 10)
            sock.sendall(deflater.message(b""))
            assert inflater.message(sock) == (2, b"")
            sock.sendall(deflater.message(""))
            assert inflater.message(sock) == (1, b"")


def test_compressed_stream_cut_at_every_position():
    """The same compressed stream (fragments, pings, text split inside a UTF-8 sequence) fed
    in random pieces, down to one byte at a time, always gives the same messages."""
    deflater = Deflater(reset=True)                 # as offered: client_no_context_takeover
    text = "héllo wörld ✓ " * 40
    noise = os.urandom(5000)
    stream = (deflater.message(text, pieces=7) + frame(b"ping", opcode=9)
              + deflater.message(noise, pieces=3) + frame("plain ✓", opcode=1)
              + deflater.message(b"z" * 70000) + deflater.message(""))
    expected = [text, noise, "plain ✓", b"z" * 70000, ""]
    rng = random.Random(3)
    cuttings = [[1] * len(stream)] + [[rng.choice((1, 2, 3, 7, 100, 5000)) for _ in range(len(stream))]
                                       for _ in range(20)]
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_no_context_takeover"}
    for sizes in cuttings:
        chunks, pos = [], 0
        for n in sizes:
            if pos >= len(stream):
                break
            chunks.append(stream[pos:pos + n])
            pos += n
        proto = WebSocketProtocol(compression=True, handshake_timeout=None)
        conn = FakeConn()
        proto.connection_made(conn)
        messages, error = drive(proto, conn, [upgrade_request(headers=offer)] + chunks)
        assert error is None
        assert messages == expected
        pongs = [f for f in server_frames(bytes(conn.sent).split(b"\r\n\r\n", 1)[1]) if f[0] == 0x8A]
        assert pongs == [(0x8A, b"ping")]


# -- bad compressed input ------------------------------------------------------------------------

def test_compression_bomb_closes_1009_with_bounded_memory(no_errors):
    """100 MB of zeros deflates to ~100 KB; the server inflates at most max_message_size + 1
    bytes of it (zlib's max_length), then closes with 1009."""
    limit = 1 << 20
    bomb = Deflater().message(bytes(100 << 20))
    assert len(bomb) < 200_000
    with serve(EchoRecorder(), protocol=WebSocketProtocol(max_message_size=limit, compression=True)) as srv:
        sock, _ = open_compressed(srv.address, "permessage-deflate")
        with sock:
            tracemalloc.start()
            try:
                try:
                    sock.sendall(bomb)
                except (BrokenPipeError, ConnectionResetError):
                    pass                          # closed before the bomb was all sent
                assert read_close(sock) == 1009
                assert closed_by_peer(sock)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert peak < 4 * limit, f"{peak} bytes traced while inflating a 100 MB bomb"
    assert any("1009" in r.getMessage() for r in no_errors.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("name,wire,code", [
    ("not deflate", frame(b"\xff\xff\xff\xff garbage", rsv=4), 1007),
    ("rsv1 on a continuation", frame(b"a", fin=False) + frame(b"b", opcode=0, rsv=4), 1002),
    ("rsv1 on a ping", frame(b"p", opcode=9, rsv=4), 1002),
    ("rsv2", frame(b"a", rsv=2), 1002),
    ("data after bfinal", frame(zlib.compress(b"x")[2:-4] + b"junk", rsv=4), 1007),
])
def test_bad_compressed_frames_close(name, wire, code, no_errors):
    with serve(EchoRecorder(), protocol=WebSocketProtocol(compression=True)) as srv:
        sock, _ = open_compressed(srv.address, "permessage-deflate")
        with sock:
            sock.sendall(Deflater().message(b"first") + wire)
            assert Inflater().message(sock) == (2, b"first")
            assert read_close(sock) == code
            assert closed_by_peer(sock)


def test_rsv1_without_negotiation_is_a_protocol_error(no_errors):
    with serve(EchoRecorder(), protocol=WebSocketProtocol(compression=True)) as srv:
        sock, head = open_ws(srv.address)                 # no extension offered
        assert extension_header(head) is None
        with sock:
            sock.sendall(Deflater().message(b"compressed anyway"))
            assert read_close(sock) == 1002


# -- negotiation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("offers,answer", [
    (["permessage-deflate"], "permessage-deflate"),
    (["permessage-deflate; client_max_window_bits"], "permessage-deflate"),
    (["permessage-deflate; client_max_window_bits=10"], "permessage-deflate; client_max_window_bits=10"),
    (['permessage-deflate; server_max_window_bits="12"'], "permessage-deflate; server_max_window_bits=12"),
    (["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    # declined offers: the next acceptable one is taken
    (["permessage-deflate; server_max_window_bits=8", "permessage-deflate"], "permessage-deflate"),
    (["permessage-deflate; unknown_param", "permessage-deflate; server_no_context_takeover"],
     "permessage-deflate; server_no_context_takeover"),
    (["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], None),
    (["permessage-deflate; server_max_window_bits=16"], None),
    (["permessage-deflate; server_max_window_bits=08"], None),
    (["permessage-deflate; server_max_window_bits"], None),       # a value is required
    (["permessage-deflate; client_no_context_takeover=1"], None),
    (["x-webkit-deflate-frame", "other"], None),
    ([], None),
])
def test_negotiation(offers, answer):
    agreed = negotiate_deflate(offers)
    assert (agreed.response if agreed else None) == answer


def test_no_compression_unless_enabled(no_errors):
    with serve(EchoRecorder(), protocol=WebSocketProtocol()) as srv:
        sock, head = open_compressed(srv.address, "permessage-deflate")
        with sock:
            assert extension_header(head) is None
            sock.sendall(frame(b"plain"))
            assert read_frame(sock) == (0x82, b"plain")
