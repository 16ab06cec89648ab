"""TLS (Server(ssl=context)): echo through the TLS engine, codecs above it, garbage rejected.

The certificate in tests/data is a self-signed one for localhost made for these tests only.
"""
from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from reactor import Connection, Handler
from reactor.codec import LineProtocol
from support import connect, recv_exactly, serve

DATA = Path(__file__).parent / "data"


def server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(DATA / "localhost.crt", DATA / "localhost.key")
    return ctx


def client(address: Any) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(DATA / "localhost.crt"))
    return ctx.wrap_socket(connect(address), server_hostname="localhost")


class Echo(Handler):
    def __init__(self) -> None:
        self.closed: list[BaseException | None] = []
        self.done = threading.Event()

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return data

    def on_close(self, conn: Connection, error: BaseException | None) -> None:
        self.closed.append(error)
        self.done.set()


def test_tls_echo_is_byte_exact_for_small_and_large_messages() -> None:
    with serve(Echo(), ssl=server_context()) as srv:
        with client(srv.address) as sock:
            assert sock.version() is not None          # the handshake completed
            sock.sendall(b"hello over tls")
            assert recv_exactly(sock, 14) == b"hello over tls"
            # An SSLSocket must not be read and written from two threads at once, so the 1 MiB
            # goes in 64 KiB steps, each read back before the next is sent.
            payload = os.urandom(1 << 20)
            echoed = bytearray()
            for start in range(0, len(payload), 65536):
                chunk = payload[start:start + 65536]
                sock.sendall(chunk)
                echoed += recv_exactly(sock, len(chunk))
            assert echoed == payload


def test_codec_runs_above_tls() -> None:
    class Upper(Handler):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            return bytes(data).upper()

    with serve(Upper(), ssl=server_context(), protocol=LineProtocol()) as srv:
        with client(srv.address) as sock:
            sock.sendall(b"one\r\ntw")
            sock.sendall(b"o\nthree\n")
            assert recv_exactly(sock, 14) == b"ONE\nTWO\nTHREE\n"


def test_plaintext_garbage_closes_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    handler = Echo()
    with caplog.at_level(logging.WARNING, logger="reactor"):
        with serve(handler, ssl=server_context()) as srv:
            raw = connect(srv.address)
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")   # not TLS
            assert handler.done.wait(10)
            raw.settimeout(10)
            try:
                while raw.recv(4096):     # maybe an alert, then EOF
                    pass
            except ConnectionResetError:
                pass
            raw.close()
            assert isinstance(handler.closed[0], ssl.SSLError)
            with client(srv.address) as sock:                # others are still served
                sock.sendall(b"still here")
                assert recv_exactly(sock, 10) == b"still here"
    assert any("TLS error" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_peer_close_notify_ends_the_connection_cleanly() -> None:
    handler = Echo()
    with serve(handler, ssl=server_context()) as srv:
        sock = client(srv.address)
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        raw = sock.unwrap()            # sends close_notify
        raw.close()
        assert handler.done.wait(10)
        assert handler.closed == [None]
