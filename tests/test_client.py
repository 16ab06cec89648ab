"""Outbound connections (loop.connect, Server.connect, reactor.Client) over real loopback:
refused and blackholed dials, names resolved off the loop and every address tried in order,
sends before the connect kept in order, TLS to a pygev TLS server, codecs, idle timeout,
lifecycle and wrong arguments.
"""
from __future__ import annotations

import errno
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from reactor import Client, Connection, ConnectionClosed, Handler, PeerTimeout
from reactor.codec import LineProtocol
from support import Recorder, TIMEOUT, scrape_metrics, serve, wait_until

DATA = Path(__file__).parent / "data"


class Collect(Recorder):
    """A dialing handler that keeps what it receives."""

    def __init__(self, want: int = 0) -> None:
        super().__init__()
        self.data = bytearray()
        self.messages: list[Any] = []
        self.want = want
        self.done = threading.Event()

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        self.messages.append(bytes(data) if not isinstance(data, str) else data)
        self.data += data if not isinstance(data, str) else data.encode()
        if self.want and len(self.data) >= self.want:
            self.done.set()
        return None


class Echo(Handler):
    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return data


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextmanager
def blackhole() -> Iterator[str]:
    """A listener (backlog 0) that never accepts, its queue filled: SYNs to it go unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    addr = listener.getsockname()
    fill: list[socket.socket] = []
    try:
        for _ in range(16):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(addr)
            fill.append(c)
            if not select.select([], [c], [], 0.3)[1]:
                break           # this one hangs: the queue is full
        else:
            pytest.fail("could not fill the listener's queue")
        yield f"127.0.0.1:{addr[1]}"
    finally:
        for c in fill:
            c.close()
        listener.close()


# ----------------------------------------------------------------------------------------
# failed dials
# ----------------------------------------------------------------------------------------
def test_dial_to_a_closed_port_runs_only_on_close_with_connection_refused() -> None:
    h = Collect()
    with Client() as cli:
        conn = cli.connect(f"127.0.0.1:{free_port()}", h)
        error = h.wait_closed(conn)
        assert isinstance(error, ConnectionRefusedError)
        assert h.connected == [] and h.close_count(conn) == 1
        assert not conn.connected
        with pytest.raises(ConnectionClosed):
            conn.send(b"x")
        wait_until(lambda: cli.stats()["dial_failed"] == 1, what="the failure counted")


def test_dial_to_a_blackholed_listener_times_out() -> None:
    h = Collect()
    with blackhole() as address, Client() as cli:
        conn = cli.connect(address, h, timeout=0.3)
        conn.send(b"never sent")
        assert not conn.connected
        error = h.wait_closed(conn)
        assert isinstance(error, TimeoutError) and "timed out" in str(error)
        assert h.connected == [] and h.close_count(conn) == 1
        assert conn.pending_write == 0           # what waited for the connect is dropped


def test_close_before_the_dial_connected_runs_only_on_close_with_none() -> None:
    h = Collect()
    with blackhole() as address, Client() as cli:
        conn = cli.connect(address, h)
        conn.close()
        assert h.wait_closed(conn) is None
        assert h.connected == [] and h.close_count(conn) == 1


def test_stop_ends_a_dial_in_progress() -> None:
    h = Collect()
    with blackhole() as address:
        cli = Client()
        with cli:
            conn = cli.connect(address, h)
            wait_until(lambda: cli.loops[0].dialer.by_fd, what="the dial under way")
        assert h.wait_closed(conn) is None
        assert h.connected == []


# ----------------------------------------------------------------------------------------
# resolution and address order
# ----------------------------------------------------------------------------------------
def test_localhost_is_resolved_off_the_loop_and_connects() -> None:
    h = Collect(want=5)
    with serve(Echo()) as srv, Client() as cli:
        conn = cli.connect(f"localhost:{srv.address[1]}", h)
        conn.send(b"hello")
        assert h.done.wait(TIMEOUT), bytes(h.data)
        assert bytes(h.data) == b"hello"
        assert conn.connected and conn.peer_addr[1] == srv.address[1]
        assert h.connect_thread[id(conn)] != threading.get_ident()


def test_every_resolved_address_is_tried_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name giving ::1 (nothing listens there) then 127.0.0.1: the first is refused, the
    second connects - the order of getaddrinfo, as for "localhost" with both families."""
    real = socket.getaddrinfo
    with serve(Echo()) as srv:
        port = srv.address[1]

        def fake(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host == "twice.test":
                return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
            if host == "never.test":
                return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port))]
            return real(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", fake)
        h = Collect(want=2)
        with Client() as cli:
            conn = cli.connect(f"twice.test:{port}", h)
            conn.send(b"ok")
            assert h.done.wait(TIMEOUT)
            assert conn.peer_addr == ("127.0.0.1", port)
            bad = Collect()
            conn2 = cli.connect(f"never.test:{port}", bad)
            error = bad.wait_closed(conn2)
            assert isinstance(error, ConnectionRefusedError) and "127.0.0.2" in str(error)
            assert bad.connected == []


def test_an_unknown_name_fails_the_dial() -> None:
    h = Collect()
    with Client() as cli:
        conn = cli.connect("no-such-host.invalid:80", h, timeout=5)
        error = h.wait_closed(conn)
        assert isinstance(error, (socket.gaierror, TimeoutError))
        assert h.connected == []


# ----------------------------------------------------------------------------------------
# sending before the connect, protocols, timeouts
# ----------------------------------------------------------------------------------------
def test_sends_before_the_connect_keep_their_order_from_any_thread() -> None:
    n = 300
    expected = b"".join(b"%05d" % i for i in range(2 * n))
    h = Collect(want=len(expected))
    with serve(Echo()) as srv, Client() as cli:
        address = f"localhost:{srv.address[1]}"     # a lookup first: the sends surely wait
        conn = cli.connect(address, h)
        for i in range(n):                        # from this thread (posted to the loop)
            conn.send(b"%05d" % i)

        def on_loop() -> None:                    # and on the loop thread, still before the connect
            for i in range(n, 2 * n):
                conn.send(bytearray(b"%05d" % i))
        cli.loops[0].call_soon(on_loop)
        assert h.done.wait(TIMEOUT), len(h.data)
        assert bytes(h.data) == expected


def test_shutdown_write_before_the_connect_sends_fin_after_the_data() -> None:
    got = bytearray()
    eof = threading.Event()

    class Sink(Handler):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            got.extend(data)

        def on_eof(self, conn: Connection) -> bool:
            eof.set()
            return False

    h = Collect()
    with serve(Sink()) as srv, Client() as cli:
        conn = cli.connect(f"localhost:{srv.address[1]}", h)
        conn.send(b"last words")
        conn.shutdown_write()
        assert eof.wait(TIMEOUT)
        assert bytes(got) == b"last words"
        with pytest.raises(ConnectionClosed):
            conn.send(b"more")
        assert h.wait_closed(conn) is None


def test_outbound_connections_use_their_own_protocol_and_handler() -> None:
    """The server speaks lines; the Client's connection frames and splits with LineProtocol."""
    class Upper(Handler):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            return bytes(data).upper()

    h = Collect()
    lines = [b"one", b"two", b"x" * 10000]
    with serve(Upper(), protocol=LineProtocol()) as srv, Client() as cli:
        conn = cli.connect(f"127.0.0.1:{srv.address[1]}", h, protocol=LineProtocol())
        for line in lines:
            conn.send(line)
        wait_until(lambda: len(h.messages) == 3, what="three replies")
        assert h.messages == [line.upper() for line in lines]
        assert conn.connected and conn.pending_read == 0


def test_replies_from_an_outbound_handler_go_back_in_order() -> None:
    """A dialed connection's on_message return value is sent (ping-pong through an echo)."""
    rounds = 200
    done = threading.Event()

    class PingPong(Handler):
        def __init__(self) -> None:
            self.seen = 0

        def on_connect(self, conn: Connection) -> None:
            conn.send(b"p")

        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            self.seen += len(data)
            if self.seen >= rounds:
                done.set()
                return None
            return data

    with serve(Echo()) as srv, Client() as cli:
        cli.connect(f"127.0.0.1:{srv.address[1]}", PingPong())
        assert done.wait(TIMEOUT)


def test_idle_timeout_closes_a_dialed_connection() -> None:
    h = Collect()
    with serve(Echo()) as srv, Client(idle_timeout=0.2) as cli:
        conn = cli.connect(f"127.0.0.1:{srv.address[1]}", h)
        error = h.wait_closed(conn)
        assert isinstance(error, PeerTimeout) and error.reason == "idle"
        assert len(h.connected) == 1


def test_server_connect_dials_from_a_server_loop_and_metrics_label_the_direction() -> None:
    h = Collect(want=3)
    with serve(Echo()) as upstream, serve(Echo(), num_loops=2,
                                         metrics_address="127.0.0.1:0") as srv:
        conn = srv.connect(f"127.0.0.1:{upstream.address[1]}", h)
        assert conn.loop in srv.loops
        conn.send(b"abc")
        assert h.done.wait(TIMEOUT)
        samples = scrape_metrics(srv.metrics_address)
        assert samples['pygev_connections_open{direction="outbound"}'] == 1
        assert samples['pygev_connections_open{direction="inbound"}'] == 0
        assert samples['pygev_connections_opened_total{direction="outbound"}'] == 1
        assert samples["pygev_connections"] == 1
        conn.close()
        h.wait_closed(conn)
        wait_until(lambda: srv.stats()["outbound"] == 0, what="the gauge back to 0")


def test_backpressure_on_a_dialed_connection_runs_the_flow_control_hooks() -> None:
    """A server that does not read for a while: the dialed connection's output passes high
    water (on_high_water), then drains (on_drain); every byte arrives, in order."""
    size = 8 << 20
    payload = bytes(range(256)) * (size // 256)
    got = bytearray()
    reading = threading.Event()
    done = threading.Event()

    class LateReader(Handler):
        def on_connect(self, conn: Connection) -> None:
            conn.pause_reading()
            conn.loop.run_after(0.3, conn.resume_reading)

        def on_message(self, conn: Connection, ctx: Any, data: Any) -> None:
            reading.set()
            got.extend(data)
            if len(got) >= size:
                done.set()

    class Flow(Collect):
        def __init__(self) -> None:
            super().__init__()
            self.hooks: list[tuple[str, int]] = []

        def on_high_water(self, conn: Connection) -> None:
            self.hooks.append(("high", conn.pending_write))

        def on_drain(self, conn: Connection) -> None:
            self.hooks.append(("drain", conn.pending_write))

    h = Flow()
    with serve(LateReader(), read_buffer_size=65536) as srv, \
            Client(write_high_water=256 << 10) as cli:
        conn = cli.connect(f"127.0.0.1:{srv.address[1]}", h)
        h.wait_connected(1)
        step = 64 << 10
        for i in range(0, size, step):              # from this thread, after the connect
            conn.send(payload[i:i + step])
        assert done.wait(TIMEOUT * 3), len(got)
        assert bytes(got) == payload
        wait_until(lambda: len(h.hooks) >= 2 and h.hooks[-1][0] == "drain",
                   what="on_drain after the last on_high_water")
        assert h.hooks[0][0] == "high" and h.hooks[1][0] == "drain"
        assert [k for k, _ in h.hooks] == ["high", "drain"] * (len(h.hooks) // 2)
        assert cli.stats()["backpressure_pauses"] >= 1


# ----------------------------------------------------------------------------------------
# TLS
# ----------------------------------------------------------------------------------------
def _server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(DATA / "localhost.crt", DATA / "localhost.key")
    return ctx


def test_tls_client_to_a_pygev_tls_server_with_server_hostname() -> None:
    payload = bytes(range(256)) * 2000          # 512 KB: many records both ways
    h = Collect(want=len(payload))
    client_ctx = ssl.create_default_context(cafile=str(DATA / "localhost.crt"))
    with serve(Echo(), ssl=_server_context()) as srv, Client() as cli:
        conn = cli.connect(f"127.0.0.1:{srv.address[1]}", h, ssl=client_ctx,
                           server_hostname="localhost")
        conn.send(payload)                      # before the handshake: it waits for it
        assert h.done.wait(TIMEOUT), len(h.data)
        assert bytes(h.data) == payload
        conn.close()
        assert h.wait_closed(conn) is None


@pytest.mark.parametrize("hostname", [None, "example.com", "ssl=True"])
def test_tls_client_verifies_the_certificate(hostname: str | None) -> None:
    """Default context (no CA for the test certificate), or the wrong name: refused."""
    h = Collect()
    ctx: Any = (ssl.create_default_context() if hostname is None else True if hostname == "ssl=True"
                else ssl.create_default_context(cafile=str(DATA / "localhost.crt")))
    if hostname == "ssl=True":
        hostname = None
    with serve(Echo(), ssl=_server_context()) as srv, Client() as cli:
        conn = cli.connect(f"localhost:{srv.address[1]}", h, ssl=ctx, server_hostname=hostname)
        conn.send(b"secret")
        error = h.wait_closed(conn)
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert bytes(h.data) == b""


# ----------------------------------------------------------------------------------------
# Client lifecycle and arguments
# ----------------------------------------------------------------------------------------
def test_client_lifecycle_with_block_start_and_stop_twice() -> None:
    h = Collect()
    with serve(Echo()) as srv:
        cli = Client(num_loops=2)
        with cli:
            conns = [cli.connect(f"127.0.0.1:{srv.address[1]}", h) for _ in range(4)]
            h.wait_connected(4)
            assert {c.loop for c in conns} == set(cli.loops)
            assert cli.connection_count == 4
        for c in conns:
            assert h.wait_closed(c) is None
        cli.stop()
        cli.stop()
        assert cli.connection_count == 0
        with pytest.raises(RuntimeError):
            cli.connect(f"127.0.0.1:{srv.address[1]}", h)
        with pytest.raises(RuntimeError):
            cli.start()

        blocking = Client()
        runner = threading.Thread(target=blocking.start)
        runner.start()
        conn = blocking.connect(f"127.0.0.1:{srv.address[1]}", h)
        wait_until(lambda: conn.connected, what="the dial from a started Client")
        blocking.stop()
        runner.join(TIMEOUT)
        assert not runner.is_alive()
        assert h.wait_closed(conn) is None


@pytest.mark.parametrize("kwargs, error, name", [
    ({"num_loops": 0}, ValueError, "num_loops"),
    ({"num_loops": "2"}, TypeError, "num_loops"),
    ({"load_balance": "random"}, ValueError, "load_balance"),
    ({"idle_timeout": -1}, ValueError, "idle_timeout"),
    ({"write_high_water": 0}, ValueError, "write_high_water"),
])
def test_client_arguments_are_checked_at_construction(kwargs: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        Client(**kwargs)


@pytest.mark.parametrize("args, kwargs, error, name", [
    ((123,), {}, TypeError, "address"),
    (("no-port",), {}, ValueError, "address"),
    ((":6379",), {}, ValueError, "host"),
    (("127.0.0.1:70000",), {}, ValueError, "port"),
    (("127.0.0.1:1", Collect), {}, TypeError, "handler"),
    (("127.0.0.1:1", object()), {}, TypeError, "handler"),
    (("127.0.0.1:1",), {"protocol": LineProtocol}, TypeError, "protocol"),
    (("127.0.0.1:1",), {"timeout": 0}, ValueError, "timeout"),
    (("127.0.0.1:1",), {"timeout": "1"}, TypeError, "timeout"),
    (("127.0.0.1:1",), {"network": "udp", "ssl": True}, ValueError, "ssl"),
    (("127.0.0.1:1",), {"network": "udp", "protocol": LineProtocol()}, ValueError, "protocol"),
    (("127.0.0.1:1",), {"network": "sctp"}, ValueError, "network"),
    (("127.0.0.1:1",), {"ssl": "yes"}, TypeError, "ssl"),
    (("127.0.0.1:1",), {"ssl": _server_context()}, ValueError, "ssl"),
    (("127.0.0.1:1",), {"server_hostname": "localhost"}, ValueError, "server_hostname"),
])
def test_connect_arguments_are_checked_in_the_call(args: tuple, kwargs: dict, error: type,
                                                   name: str) -> None:
    if len(args) == 1:
        args = (*args, Collect())
    with Client() as cli:
        with pytest.raises(error, match=name):
            cli.connect(*args, **kwargs)
        assert cli.loops[0].dialer.by_fd == {}


def test_server_connect_with_workers_is_refused() -> None:
    from reactor import Server
    srv = Server(Echo(), address="127.0.0.1:0", workers=2)
    with pytest.raises(RuntimeError, match="workers"):
        srv.connect("127.0.0.1:1", Collect())


def test_a_unix_socket_can_be_dialed(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    h = Collect(want=4)
    with serve(Echo(), address=path, network="unix"), Client() as cli:
        conn = cli.connect(path, h, network="unix")
        conn.send(b"unix")
        assert h.done.wait(TIMEOUT)
        assert bytes(h.data) == b"unix"
        refused = Collect()
        gone = cli.connect(str(tmp_path / "nobody"), refused, network="unix")
        error = refused.wait_closed(gone)
        assert isinstance(error, OSError) and error.errno in (errno.ENOENT, errno.ECONNREFUSED)


def test_connect_udp_gives_a_connected_datagram_connection() -> None:
    """loop.connect(..., network="udp"): datagrams out and back through the dialing handler."""
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(5)
    got: list[bytes] = []
    done = threading.Event()

    class Dialing(Handler):
        def on_message(self, conn, ctx, data):
            got.append(bytes(data))
            done.set()

    with Client() as cli:
        conn = cli.connect("127.0.0.1:%d" % echo.getsockname()[1], Dialing(), network="udp")
        conn.send(b"ping")
        data, peer = echo.recvfrom(100)
        assert data == b"ping"
        echo.sendto(b"pong", peer)
        assert done.wait(5)
    echo.close()
    assert got == [b"pong"]
