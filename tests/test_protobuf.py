"""reactor.plugins.protobuf: gev's frame format, the registry, bad input, and the examples."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest
from codec_reference import StubConn
from support import TIMEOUT, EchoRecorder, closed_by_peer, connect, recv_exactly, serve, wait_until

from reactor.plugins.protobuf import ProtobufProtocol
from reactor.protocol import ProtocolError
from ringbuf import RingBuffer, ViewBuffer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples", "proto"))
import chat_pb2  # noqa: E402


def test_frame_layout_matches_gev():
    proto = ProtobufProtocol(chat_pb2.Ping)
    wire = proto.encode(chat_pb2.Ping(seq=3, text="hi"))
    name = b"pygev.example.Ping"
    payload = chat_pb2.Ping(seq=3, text="hi").SerializeToString()
    rest = 2 + len(name) + len(payload)
    assert wire == rest.to_bytes(4, "big") + len(name).to_bytes(2, "big") + name + payload
    assert proto.packet(None, chat_pb2.Ping(seq=3, text="hi")) == wire
    assert proto.packet(None, wire) == wire                      # already framed bytes pass through
    with pytest.raises(TypeError):
        proto.packet(None, "text")


def test_unpacket_whole_split_and_pipelined():
    proto = ProtobufProtocol(chat_pb2.Ping, chat_pb2.Pong)
    msgs = [chat_pb2.Ping(seq=1, text="a"), chat_pb2.Pong(seq=2, text="b", served_by=7), chat_pb2.Ping()]
    stream = b"".join(proto.encode(m) for m in msgs)
    buf = ViewBuffer(stream)
    got = [proto.unpacket(StubConn(), buf) for _ in msgs]
    assert [(n, m) for n, m in got] == [(m.DESCRIPTOR.full_name, m) for m in msgs]
    assert proto.unpacket(StubConn(), buf) is None and len(buf) == 0
    ring, out = RingBuffer(16), []
    for i in range(len(stream)):                                 # byte by byte
        ring.write(stream[i:i + 1])
        while (item := proto.unpacket(StubConn(), ring)) is not None:
            out.append(item[1])
    assert out == msgs


@pytest.mark.parametrize("wire,reason", [
    (b"\0\0\0\x01x", "bad length"),
    (b"\0\0\0\x05\0\x09abc", "bad name length"),
    (b"\0\0\0\x05\0\x03abc", "unknown message name"),
    (b"\0\0\0\x16\0\x12pygev.example.Ping\xff\xff", "undecodable"),
    (b"\0\x10\0\0", "too long"),                                  # known from the length alone
])
def test_bad_frames_raise_protocol_error(wire, reason):
    proto = ProtobufProtocol(chat_pb2.Ping, max_frame_length=1 << 16)
    with pytest.raises(ProtocolError, match=reason):
        proto.unpacket(StubConn(), ViewBuffer(wire))


def test_registry_and_config():
    proto = ProtobufProtocol(chat_pb2.Ping)
    proto.register(chat_pb2.Pong)
    assert sorted(proto.message_names) == ["pygev.example.Ping", "pygev.example.Pong"]
    with pytest.raises(ValueError):
        ProtobufProtocol(max_frame_length=3)


class PingPong(EchoRecorder):
    def on_message(self, conn, ctx, data):
        if ctx == "pygev.example.Ping" and data.text == "send":
            conn.send(chat_pb2.Pong(seq=data.seq, text="sent"))    # send() encodes too
            return None
        return chat_pb2.Pong(seq=data.seq, text=data.text.upper())


def test_server_round_trip_and_bad_client(caplog):
    caplog.set_level(logging.WARNING, logger="reactor")
    proto = ProtobufProtocol(chat_pb2.Ping, max_frame_length=4096)
    reader = ProtobufProtocol(chat_pb2.Pong)
    with serve(PingPong(), protocol=proto) as srv:
        with connect(srv.address) as good, connect(srv.address) as bad:
            good.sendall(proto.encode(chat_pb2.Ping(seq=1, text="x"))
                         + proto.encode(chat_pb2.Ping(seq=2, text="send")))
            ring = RingBuffer(4096)
            replies = []
            while len(replies) < 2:
                ring.write(good.recv(4096))
                while (item := reader.unpacket(None, ring)) is not None:
                    replies.append(item)
            assert replies == [("pygev.example.Pong", chat_pb2.Pong(seq=1, text="X")),
                               ("pygev.example.Pong", chat_pb2.Pong(seq=2, text="sent"))]
            bad.sendall(b"\0\0\0\x08\0\x06nosuch")                  # unknown name: closed
            assert closed_by_peer(bad)
            good.sendall(proto.encode(chat_pb2.Ping(seq=3, text="y")))
            wire = reader.encode(chat_pb2.Pong(seq=3, text="Y"))
            assert recv_exactly(good, len(wire)) == wire
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unknown message name" in w for w in warnings)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_examples_client_against_server():
    port = free_port()
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "protobuf_server.py"),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                assert server.poll() is None, server.stderr.read()
                return False
        wait_until(listening, what="protobuf_server.py listening")
        out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "protobuf_client.py"),
                              "--port", str(port), "--count", "5"], capture_output=True, text=True,
                             timeout=TIMEOUT, check=False)
        assert out.returncode == 0, out.stderr
        assert "ok: 5 pongs" in out.stdout and "text='PING 4'" in out.stdout
    finally:
        server.terminate()
        server.wait(TIMEOUT)
