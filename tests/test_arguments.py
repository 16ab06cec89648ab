"""SPEC "Safety rules": arguments are checked when the Server is built, with a TypeError or
ValueError that names the argument; a server serves once; repr() tells where and in what state."""
from __future__ import annotations

import re
import ssl
from typing import Any

import pytest
from support import EchoRecorder, connect, recv_exactly

from reactor import DefaultProtocol, Server

ADDR = "127.0.0.1:0"


@pytest.mark.parametrize("options, error, match", [
    ({"protocol": DefaultProtocol}, TypeError, "protocol.*instance"),
    ({"ssl": True}, TypeError, "ssl"),
    ({"ssl": "cert.pem"}, TypeError, "ssl"),
    ({"address": "127.0.0.1:99999"}, ValueError, "port"),
    ({"address": "127.0.0.1:-1"}, ValueError, "port|address"),
    ({"address": ("127.0.0.1", 1)}, TypeError, "address"),
    ({"address": 1833}, TypeError, "address"),
    ({"idle_timeout": -1}, ValueError, "idle_timeout"),
    ({"idle_timeout": 0}, ValueError, "idle_timeout"),
    ({"write_high_water": 1000, "write_low_water": 2000}, ValueError, "write_low_water"),
    ({"metrics_address": "nonsense"}, ValueError, "metrics_address"),
    ({"metrics_address": 9100}, TypeError, "metrics_address"),
    ({"num_loops": 0}, ValueError, "num_loops"),
    ({"num_loops": "2"}, TypeError, "num_loops"),
    ({"view_threshold": -1}, ValueError, "view_threshold"),
    ({"network": "sctp"}, ValueError, "network"),
    ({"load_balance": "random"}, ValueError, "load_balance"),
], ids=lambda v: repr(v) if not isinstance(v, dict) else ",".join(f"{k}={v[k]!r}" for k in v))
def test_bad_argument_is_refused_naming_it(options: dict[str, Any], error: type[Exception],
                                           match: str) -> None:
    options.setdefault("address", ADDR)
    with pytest.raises(error, match=match):
        Server(EchoRecorder(), **options)


def test_handler_class_instead_of_instance() -> None:
    with pytest.raises(TypeError, match="instance"):
        Server(EchoRecorder, address=ADDR)        # type: ignore[arg-type]


def test_protocol_class_instead_of_instance() -> None:
    with pytest.raises(TypeError, match="instance"):
        Server(EchoRecorder(), address=ADDR, protocol=DefaultProtocol)   # type: ignore[arg-type]


def test_client_side_ssl_context_is_refused() -> None:
    with pytest.raises(ValueError, match="client"):
        Server(EchoRecorder(), address=ADDR, ssl=ssl.create_default_context())
    with pytest.raises(ValueError, match="client"):
        Server(EchoRecorder(), address=ADDR, ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


def test_server_side_ssl_context_is_accepted() -> None:
    srv = Server(EchoRecorder(), address=ADDR,
                 ssl=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    assert srv.options.ssl is not None


def test_edge_values_are_accepted() -> None:
    Server(EchoRecorder(), address="127.0.0.1:65535")
    Server(EchoRecorder(), address=ADDR, view_threshold=0)
    Server(EchoRecorder(), address=ADDR, view_threshold=None)
    Server(EchoRecorder(), address=ADDR, write_high_water=1000, write_low_water=1000)


def test_run_every_needs_a_callable() -> None:
    srv = Server(EchoRecorder(), address=ADDR)
    with pytest.raises(TypeError, match="callable"):
        srv.run_every(1, "not callable")          # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        srv.run_after(1, None)                    # type: ignore[arg-type]


def test_with_on_a_stopped_server_raises() -> None:
    handler = EchoRecorder()
    srv = Server(handler, address=ADDR)
    with srv:
        with connect(srv.address, timeout=5.0) as sock:
            sock.sendall(b"once")
            assert recv_exactly(sock, 4, 5.0) == b"once"
    with pytest.raises(RuntimeError):
        with srv:
            pass
    with pytest.raises(RuntimeError):
        srv.start()


def test_with_on_a_server_stopped_before_start_raises() -> None:
    """`with` on a server that was stopped before it started would not serve: it says so.
    (start() itself returns at once there: a stop signal that came first wins.)"""
    srv = Server(EchoRecorder(), address=ADDR)
    srv.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        with srv:
            pass
    srv.start()                       # returns at once, serving nothing
    assert srv.address is None


def test_repr_mentions_address_and_state() -> None:
    srv = Server(EchoRecorder(), address=ADDR)
    text = repr(srv)
    assert "127.0.0.1:0" in text and "not started" in text, text
    with srv:
        host, port = srv.address
        text = repr(srv)
        assert re.search(rf"{re.escape(host)}.*{port}", text) and "serving" in text, text
    text = repr(srv)
    assert "stopped" in text, text
