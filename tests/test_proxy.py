"""examples/proxy.py over real loopback: byte-exact from 1 B to 64 MiB, a slow reader on either
side with the proxy's queued output bounded (on_high_water / on_drain pause the feeding side),
half-close passed through both ways, an unreachable upstream.
"""
from __future__ import annotations

import importlib.util
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reactor import Connection, Handler, Server
from support import TIMEOUT, connect, echo_exchange, recv_exactly, recv_to_eof, serve

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("proxy_example", ROOT / "examples" / "proxy.py")
assert _spec is not None and _spec.loader is not None
proxy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(proxy)

HIGH = 256 << 10
READ = 65536
BOUND = HIGH + 8 * READ         # high water, plus what is read before the pause takes effect


class Echo(Handler):
    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return data


def proxy_to(upstream: Any, **options: Any) -> Server:
    options.setdefault("write_high_water", HIGH)
    return serve(proxy.Proxy(f"127.0.0.1:{upstream[1]}"), **options)


class PendingMonitor:
    """Samples the largest pending_write of the proxy's connections, on the proxy's loop."""

    def __init__(self, srv: Server) -> None:
        self.max = 0
        self.conns = 0
        loop = srv.loops[0]

        def sample() -> None:
            for conn in list(loop.conns.values()):
                self.max = max(self.max, conn.pending_write)
            self.conns = max(self.conns, len(loop.conns))
        self.timer = loop.run_every(0.002, sample)


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("size", [1, 1000, 65537, 1 << 20, 64 << 20])
def test_proxy_is_byte_exact(size: int) -> None:
    payload = pattern(size, size)
    with serve(Echo()) as upstream, proxy_to(upstream.address) as px:
        got = echo_exchange(px.address, payload, random.Random(size), timeout=120)
        assert got == payload


def test_slow_client_reader_keeps_the_proxy_bounded() -> None:
    """The upstream pours 32 MiB; the client does not read for a while: the proxy pauses the
    upstream instead of buffering it, then everything arrives intact."""
    size = 32 << 20
    payload = pattern(size, 7)

    class Pour(Handler):
        def on_connect(self, conn: Connection) -> None:
            conn.send(payload)
            conn.shutdown_write()

    with serve(Pour(), write_limit=64 << 20) as upstream, proxy_to(upstream.address) as px:
        monitor = PendingMonitor(px)
        client = connect(px.address, rcvbuf=65536)
        with client:
            time.sleep(0.5)                          # the slow reader: nothing read yet
            stalled = monitor.max
            got = recv_to_eof(client, timeout=60, limit=size)
        assert got == payload
        assert 0 < stalled <= BOUND and monitor.max <= BOUND, (stalled, monitor.max)


def test_slow_upstream_reader_keeps_the_proxy_bounded() -> None:
    """The client pushes 32 MiB; the upstream (a plain socket) does not read for a while."""
    size = 32 << 20
    payload = pattern(size, 8)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = bytearray()
    done = threading.Event()

    def slow_upstream() -> None:
        listener.settimeout(TIMEOUT)
        peer, _ = listener.accept()
        with peer:
            time.sleep(0.5)
            received.extend(recv_exactly(peer, size, timeout=60))
        done.set()

    reader = threading.Thread(target=slow_upstream, daemon=True)
    reader.start()
    with listener, proxy_to(listener.getsockname()) as px:
        monitor = PendingMonitor(px)
        client = connect(px.address)
        with client:
            sender = threading.Thread(target=client.sendall, args=(payload,), daemon=True)
            sender.start()
            assert done.wait(60)
            sender.join(TIMEOUT)
        assert bytes(received) == payload
        assert 0 < monitor.max <= BOUND, monitor.max


def test_half_close_from_the_client_reaches_the_upstream() -> None:
    """The client sends a request and FIN; the upstream answers after the FIN, then closes."""
    class AnswerAtEof(Handler):
        def on_connect(self, conn: Connection) -> None:
            conn.context = bytearray()

        def on_message(self, conn: Connection, ctx: Any, data: Any) -> None:
            conn.context += data

        def on_eof(self, conn: Connection) -> bool:
            conn.send(b"got " + bytes(conn.context))
            return False                            # close after the reply

    with serve(AnswerAtEof()) as upstream, proxy_to(upstream.address) as px:
        client = connect(px.address)
        with client:
            client.sendall(b"the whole request")
            client.shutdown(socket.SHUT_WR)
            assert recv_to_eof(client) == b"got the whole request"


def test_half_close_from_the_upstream_keeps_the_other_direction() -> None:
    """The upstream says hello and FIN; the client sees the FIN, then still sends upstream."""
    late = bytearray()
    got_late = threading.Event()

    class HelloThenFin(Handler):
        def on_connect(self, conn: Connection) -> None:
            conn.send(b"hello")
            conn.shutdown_write()

        def on_message(self, conn: Connection, ctx: Any, data: Any) -> None:
            late.extend(data)
            if bytes(late) == b"still here":
                got_late.set()

    with serve(HelloThenFin()) as upstream, proxy_to(upstream.address) as px:
        client = connect(px.address)
        with client:
            assert recv_to_eof(client) == b"hello"
            client.sendall(b"still here")
            assert got_late.wait(TIMEOUT)
            client.shutdown(socket.SHUT_WR)
            assert recv_to_eof(client) == b""
        deadline = time.monotonic() + TIMEOUT
        while px.loops[0].conns and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not px.loops[0].conns                # both sides closed once both ended


def test_an_unreachable_upstream_closes_the_client() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with proxy_to(("127.0.0.1", port)) as px:
        client = connect(px.address)
        with client:
            assert recv_to_eof(client) == b""
