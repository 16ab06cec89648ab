"""Networks and socket options: a unix socket (address is the path), IPv6 on [::1], and the
options set on accepted sockets (TCP_NODELAY by default, keepalive when asked)."""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

from support import TIMEOUT, Recorder, connect, recv_exactly, serve

from reactor import Connection


class OptionsProbe(Recorder):
    """Reads the accepted socket's options from on_connect (a borrowed fd: detached after)."""

    def __init__(self) -> None:
        super().__init__()
        self.options: dict[str, int] = {}
        self.seen = threading.Event()

    def on_connect(self, conn: Connection) -> None:
        sock = socket.socket(fileno=conn.fd)
        try:
            get = sock.getsockopt
            self.options = {
                "nodelay": get(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                "keepalive": get(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "keepidle": get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "keepintvl": get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            }
        finally:
            sock.detach()
        self.seen.set()
        super().on_connect(conn)

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return data


def accepted_options(**server_options: Any) -> dict[str, int]:
    probe = OptionsProbe()
    with serve(probe, **server_options) as srv, connect(srv.address) as s:
        s.sendall(b"hi")
        assert recv_exactly(s, 2) == b"hi"
        assert probe.seen.wait(TIMEOUT)
    return probe.options


def test_unix_socket_echo_and_its_address_is_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "pygev.sock")
    handler = Recorder()
    handler.on_message = lambda conn, ctx, data: data  # type: ignore[method-assign]
    with serve(handler, network="unix", address=path) as srv:
        assert srv.address == path
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(TIMEOUT)
            s.connect(path)
            s.sendall(b"over a unix socket")
            assert recv_exactly(s, 18) == b"over a unix socket"
            (conn,) = handler.wait_connected(1)
            assert conn.local_addr == path
    assert not os.path.exists(path)


def test_tcp6_on_loopback() -> None:
    handler = Recorder()
    handler.on_message = lambda conn, ctx, data: data  # type: ignore[method-assign]
    with serve(handler, network="tcp6", address="[::1]:0") as srv:
        assert len(srv.address) == 4 and srv.address[0] == "::1" and srv.address[1] > 0
        with connect(srv.address) as s:
            s.sendall(b"v6")
            assert recv_exactly(s, 2) == b"v6"
            (conn,) = handler.wait_connected(1)
            assert conn.peer_addr == s.getsockname()
            assert conn.local_addr == srv.address


def test_accepted_sockets_get_nodelay_and_no_keepalive_by_default() -> None:
    options = accepted_options()
    assert options["nodelay"] != 0
    assert options["keepalive"] == 0


def test_tcp_keepalive_is_set_on_accepted_sockets() -> None:
    options = accepted_options(tcp_keepalive=30)
    assert options["keepalive"] != 0
    assert options["keepidle"] == 30
    assert 1 <= options["keepintvl"] <= 30


def test_tcp_nodelay_can_be_turned_off() -> None:
    assert accepted_options(tcp_nodelay=False)["nodelay"] == 0
