"""UDP servers (network="udp"/"udp4"/"udp6") and connected UDP sockets (udp.dial_udp), over real
loopback sockets: echo, per-peer connections and context, expiry, batches larger than one
recvmmsg, oversized datagrams dropped with a warning, empty datagrams, stop."""
from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any

import pytest

from reactor import Handler, PeerTimeout, Server
from reactor.codec import LineProtocol
from reactor.udp import UDP_BATCH, dial_udp
from support import TIMEOUT, Recorder, open_fds, serve, wait_until


def client(family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    return sock


def nothing_arrives(sock: socket.socket, wait: float = 0.2) -> bool:
    sock.settimeout(wait)
    try:
        sock.recvfrom(70000)
    except socket.timeout:
        return True
    finally:
        sock.settimeout(TIMEOUT)
    return False


class Counting(Recorder):
    """Replies `<data>#<n>`: n counts this peer's datagrams (its context)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def on_connect(self, conn: Any) -> None:
        conn.context = 0
        super().on_connect(conn)

    def on_message(self, conn: Any, ctx: Any, data: Any) -> Any:
        assert type(data) is bytes
        self.seen.append(id(conn))
        if data == b"none":
            return None
        if data == b"bye":
            conn.close()
            return b"bye!"
        if data == b"boom":
            raise RuntimeError("boom")
        conn.context += 1
        return data + b"#%d" % conn.context


def test_echo_context_per_peer_and_empty_datagrams() -> None:
    h = Counting()
    with serve(h, network="udp") as srv:
        a, b = client(), client()
        for i in range(1, 4):
            a.sendto(b"a", srv.address)
            assert a.recvfrom(100) == (b"a#%d" % i, srv.address)
        b.sendto(b"b", srv.address)
        assert b.recv(100) == b"b#1"            # its own context
        a.sendto(b"", srv.address)
        assert a.recv(100) == b"#4"              # an empty datagram is a message too
        a.sendto(b"none", srv.address)           # None: nothing is sent
        a.sendto(b"x", srv.address)
        assert a.recv(100) == b"x#5"
        conns = h.wait_connected(2)
        assert len(conns) == 2 and len(set(h.seen)) == 2     # one Connection object per peer
        assert {c.peer_addr for c in conns} == {("127.0.0.1", a.getsockname()[1]),
                                              ("127.0.0.1", b.getsockname()[1])}
        assert conns[0].local_addr == srv.address
        assert srv.connection_count == 2


def test_empty_reply_is_an_empty_datagram() -> None:
    class Empty(Handler):
        def on_message(self, conn: Any, ctx: Any, data: Any) -> Any:
            return b""

    with serve(Empty(), network="udp4") as srv:
        c = client()
        c.sendto(b"hello", srv.address)
        assert c.recvfrom(100) == (b"", srv.address)


def test_close_forgets_peer_and_error_closes_it() -> None:
    h = Counting()
    with serve(h, network="udp") as srv:
        c = client()
        c.sendto(b"x", srv.address)
        assert c.recv(100) == b"x#1"
        c.sendto(b"bye", srv.address)
        assert c.recv(100) == b"bye!"            # the reply of the closing call still goes out
        first = h.wait_connected(1)[0]
        assert h.wait_closed(first) is None and not first.connected
        c.sendto(b"x", srv.address)
        assert c.recv(100) == b"x#1"             # a new peer: context starts again
        second = h.wait_connected(2)[1]
        assert second is not first and second.peer_addr == first.peer_addr
        c.sendto(b"boom", srv.address)
        assert isinstance(h.wait_closed(second), RuntimeError)
        assert nothing_arrives(c)
        wait_until(lambda: srv.connection_count == 0, what="peers forgotten")


def test_quiet_peers_expire_with_timeout_error() -> None:
    h = Counting()
    with serve(h, network="udp", idle_timeout=0.2) as srv:
        c = client()
        c.sendto(b"x", srv.address)
        assert c.recv(100) == b"x#1"
        conn = h.wait_connected(1)[0]
        err = h.wait_closed(conn, timeout=3)
        assert isinstance(err, PeerTimeout) and isinstance(err, TimeoutError)
        assert srv.connection_count == 0 and srv.stats()["closed"].get("idle") == 1
        c.sendto(b"y", srv.address)
        assert c.recv(100) == b"y#1"
        assert h.wait_connected(2)[1] is not conn


def test_bursts_larger_than_one_recvmmsg_all_answered() -> None:
    gate = threading.Event()

    class Gated(Handler):
        def on_message(self, conn: Any, ctx: Any, data: Any) -> Any:
            if data == b"block":
                gate.wait(TIMEOUT)      # the loop is busy: the burst queues in the socket
            return data

    with serve(Gated(), network="udp", slow_callback=None) as srv:
        rcvbuf = srv.admission.datagram_sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        per_socket = min(3 * UDP_BATCH, rcvbuf // 1024) // 4    # ~830 B of buffer per small datagram
        socks = [client() for _ in range(4)]
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        socks[0].sendto(b"block", srv.address)
        time.sleep(0.1)
        for i in range(per_socket):
            for k, s in enumerate(socks):
                s.sendto(b"%d-%06d" % (k, i), srv.address)
        gate.set()
        assert socks[0].recv(100) == b"block"
        assert 4 * per_socket > UDP_BATCH
        for k, s in enumerate(socks):
            got = [s.recv(100) for _ in range(per_socket)]
            assert got == [b"%d-%06d" % (k, i) for i in range(per_socket)]


def test_oversized_datagram_dropped_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Echo(Handler):
        def on_message(self, conn: Any, ctx: Any, data: Any) -> Any:
            return data

    with caplog.at_level(logging.WARNING, logger="reactor"):
        with serve(Echo(), network="udp", read_buffer_size=1024) as srv:
            c = client()
            c.sendto(b"z" * 1025, srv.address)
            assert nothing_arrives(c)
            c.sendto(b"k" * 1024, srv.address)              # exactly the limit: delivered whole
            assert c.recv(2000) == b"k" * 1024
            assert srv.stats()["datagrams_dropped"] == {"too_long": 1}
    assert any("1025 bytes" in r.getMessage() and "read_buffer_size" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_udp6_echo_and_peer_address() -> None:
    h = Counting()
    with serve(h, network="udp6", address="[::1]:0") as srv:
        assert len(srv.address) == 4
        c = client(socket.AF_INET6)
        c.sendto(b"six", srv.address)
        assert c.recv(100) == b"six#1"
        conn = h.wait_connected(1)[0]
        assert conn.peer_addr[:2] == ("::1", c.getsockname()[1]) and len(conn.peer_addr) == 4


def test_send_from_thread_pending_write_and_stop_closes_peers() -> None:
    h = Counting()
    before = open_fds()
    with serve(h, network="udp") as srv:
        c = client()
        c.sendto(b"x", srv.address)
        assert c.recv(100) == b"x#1"
        conn = h.wait_connected(1)[0]
        wait_until(lambda: conn.pending_write == 0, what="the reply counted as sent")
        conn.send(b"pushed from a thread")
        conn.send(bytearray(b"and another"))
        assert c.recv(100) == b"pushed from a thread"
        assert c.recv(100) == b"and another"
        with pytest.raises(TypeError, match="str"):
            conn.send("text")
        with pytest.raises(ValueError, match="exceeds the UDP maximum"):
            conn.send(b"x" * 70000)
    assert h.wait_closed(conn) is None
    with pytest.raises(Exception, match="closed"):
        conn.send(b"late")
    c.close()
    wait_until(lambda: open_fds() <= before, what="no descriptor left")


def test_bad_arguments_name_them() -> None:
    with pytest.raises(ValueError, match="protocol"):
        Server(Handler(), address="127.0.0.1:0", network="udp", protocol=LineProtocol())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ValueError, match="ssl"):
        Server(Handler(), address="127.0.0.1:0", network="udp", ssl=ctx)
    with pytest.raises(ValueError, match="workers"):
        Server(Handler(), address="127.0.0.1:0", network="udp", workers=2)
    with pytest.raises(ValueError, match="network"):
        Server(Handler(), address="127.0.0.1:0", network="udp5")


def test_several_loops_keep_each_peer_on_one_loop() -> None:
    h = Counting()
    with serve(h, network="udp", num_loops=2) as srv:
        socks = [client() for _ in range(6)]
        for _ in range(3):
            for s in socks:
                s.sendto(b"m", srv.address)
        for s in socks:
            assert [s.recv(100) for _ in range(3)] == [b"m#1", b"m#2", b"m#3"]
        assert srv.connection_count == 6


class Dialer(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[bytes] = []

    def on_connect(self, conn: Any) -> None:
        conn.send(b"hello")             # on_connect may send at once
        super().on_connect(conn)

    def on_message(self, conn: Any, ctx: Any, data: Any) -> Any:
        with self.cond:
            self.got.append(data)
            self.cond.notify_all()
        return None


def test_dial_udp_connected_socket() -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(TIMEOUT)
    d = Dialer()
    with serve(Handler()) as srv:
        conn = dial_udp(srv.loops[0], "127.0.0.1:%d" % echo.getsockname()[1], d)
        conn.send(b"second")            # queued in order behind on_connect's send
        data, addr = echo.recvfrom(100)
        assert data == b"hello"
        assert echo.recvfrom(100)[0] == b"second"
        assert conn.peer_addr == echo.getsockname() and addr == conn.local_addr
        echo.sendto(b"back", addr)
        echo.sendto(b"", addr)
        with d.cond:
            assert d.cond.wait_for(lambda: len(d.got) == 2, TIMEOUT)
        assert d.got == [b"back", b""]
        conn.close()
        assert d.wait_closed(conn) is None
    echo.close()


def test_dial_udp_to_closed_port_is_refused() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                       # nothing listens there now: ICMP port unreachable
    d = Dialer()
    with serve(Handler()) as srv:
        conn = dial_udp(srv.loops[0], ("127.0.0.1", port), d)    # on_connect sends "hello"
        err = d.wait_closed(conn)
        assert isinstance(err, ConnectionRefusedError)
        assert d.close_count(conn) == 1


def test_max_connections_caps_peers_and_pause_drops_datagrams() -> None:
    h = Counting()
    with serve(h, network="udp", max_connections=1) as srv:
        a, b = client(), client()
        a.sendto(b"a", srv.address)
        assert a.recv(100) == b"a#1"
        b.sendto(b"b", srv.address)              # over the cap: no peer, no on_connect, no reply
        assert nothing_arrives(b)
        conn = h.wait_connected(1)[0]
        assert len(h.connected) == 1 and srv.stats()["datagrams_dropped"]["over_limit"] == 1
        conn.pause_reading()
        wait_until(lambda: conn._paused, what="paused")
        a.sendto(b"a", srv.address)              # dropped while paused
        assert nothing_arrives(a)
        conn.resume_reading()
        wait_until(lambda: not conn._paused, what="resumed")
        a.sendto(b"a", srv.address)
        assert a.recv(100) == b"a#2"
        assert srv.stats()["datagrams_dropped"]["paused"] == 1
        with pytest.raises(TypeError, match="sendfile"):
            conn.sendfile(0)


def test_random_sizes_echo_byte_exact_and_oversized_never_truncated() -> None:
    import random

    class Echo(Handler):
        def on_message(self, conn: Any, ctx: Any, data: Any) -> Any:
            return data

    rng = random.Random(11)
    limit = 4096
    with serve(Echo(), network="udp", read_buffer_size=limit) as srv:
        socks = [client() for _ in range(3)]
        dropped = 0
        for i in range(150):
            s = socks[i % 3]
            size = rng.choice([0, 1, limit - 1, limit, limit + 1, rng.randrange(0, 3 * limit)])
            payload = rng.randbytes(size)
            s.sendto(payload, srv.address)
            if size > limit:                    # dropped: the next reply is the marker's
                dropped += 1
                s.sendto(b"marker", srv.address)
                assert s.recv(3 * limit) == b"marker"
            else:
                assert s.recv(3 * limit) == payload
        assert srv.stats()["datagrams_dropped"].get("too_long", 0) == dropped > 0


def test_deferred_replies_futures_and_async_handlers() -> None:
    """A Future or an `async def on_message` result is the datagram, sent when it is done."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(2)

    class Pooled(Handler):
        def on_message(self, conn, ctx, data):
            return pool.submit(lambda d: b"F" + d, bytes(data))

    class Awaiting(Handler):
        async def on_message(self, conn, ctx, data):
            await asyncio.sleep(0.001)
            if data == b"boom":
                raise ValueError("boom")
            return b"A" + data

    try:
        for handler, tag in ((Pooled(), b"F"), (Awaiting(), b"A")):
            with Server(handler, address="127.0.0.1:0", network="udp") as srv:
                sock = client()
                for i in range(20):
                    sock.sendto(b"m%d" % i, srv.address)
                got = sorted(sock.recvfrom(100)[0] for _ in range(20))
                assert got == sorted(tag + b"m%d" % i for i in range(20))
                if tag == b"A":
                    sock.sendto(b"boom", srv.address)      # closes that peer, sends nothing
                    assert nothing_arrives(sock)
                sock.close()
    finally:
        pool.shutdown()
