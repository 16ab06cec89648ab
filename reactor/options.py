"""Server options: every argument of `Server(...)`, checked once when the server is built.

A wrong argument is a TypeError or ValueError that names it, raised by the constructor - never
garbage at run time.  The options are frozen: loops read them, workers rebuild servers from them.
"""
from __future__ import annotations

import ssl as _ssl
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from .backends import Backend, check_name

Network = Literal["tcp", "tcp4", "tcp6", "unix", "udp", "udp4", "udp6"]
LoadBalance = Literal["round_robin", "least_connections", "source_addr_hash"]
NETWORKS = ("tcp", "tcp4", "tcp6", "unix", "udp", "udp4", "udp6")
BALANCERS = ("round_robin", "least_connections", "source_addr_hash")


def _number(name: str, value: Any, *, minimum: float | None = None, integer: bool = False,
            allow_none: bool = False, exclusive: bool = False) -> None:
    if value is None and allow_none:
        return
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "an int" if integer else "a number"
        raise TypeError(f"{name} must be {what}{' or None' if allow_none else ''}, "
                        f"not {type(value).__name__}")
    if value != value:      # NaN
        raise ValueError(f"{name} must be a number, not NaN")
    number: Any = value
    if minimum is not None and (number <= minimum if exclusive else number < minimum):
        raise ValueError(f"{name} must be {'>' if exclusive else '>='} {minimum}, got {value}")


check_number = _number


def check_handler(handler: Any, protocol: Any) -> None:
    """A handler and a protocol that are instances of the right kind (TypeError otherwise)."""
    if isinstance(handler, type):
        raise TypeError(f"handler must be an instance, not the class {handler.__name__} "
                        f"(write {handler.__name__}())")
    if not callable(getattr(handler, "on_message", None)):
        raise TypeError(f"handler must be a reactor.Handler (or have on_message), "
                        f"not {type(handler).__name__}")
    if isinstance(protocol, type):
        raise TypeError(f"protocol must be an instance, not the class {protocol.__name__} "
                        f"(write {protocol.__name__}())")
    if protocol is not None and not callable(getattr(protocol, "unpacket", None)):
        raise TypeError(f"protocol must be a reactor.Protocol, not {type(protocol).__name__}")


def check_port(name: str, address: str) -> None:
    """`host:port` with a port in 0-65535 (ValueError naming `name` otherwise)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{name} {address!r} is not host:port (e.g. '127.0.0.1:1833' or ':1833')")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"{name} {address!r}: port {port} is outside 0-65535")


@dataclass(frozen=True)
class ServerOptions:
    """Every Server option (see `Server` for what each means)."""

    address: str = ":1833"
    network: Network = "tcp"
    num_loops: int = 1
    workers: int = 1
    reuse_port: bool = False
    idle_timeout: float | None = None
    load_balance: LoadBalance = "round_robin"
    metrics_address: str | None = None
    metrics_path: str = "/metrics"
    tcp_nodelay: bool = True
    tcp_keepalive: float | None = None
    backlog: int = 1024
    max_connections: int | None = None
    read_buffer_size: int = 65536
    write_high_water: int = 1 << 20
    write_low_water: int = 1 << 18
    write_limit: int = 16 << 20
    view_threshold: int | None = 4096
    frame_timeout: float = 30.0
    handshake_timeout: float | None = 10.0
    ssl: Any = None
    slow_callback: float | None = 0.1
    max_pending_replies: int = 64
    backend: Backend | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.address, str):
            raise TypeError(f"address must be a str ('host:port', ':port' or a unix path), "
                            f"not {type(self.address).__name__}")
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {self.network!r}")
        if self.network != "unix":
            check_port("address", self.address)
        elif not self.address:
            raise ValueError("address must be a filesystem path for network='unix'")
        if self.load_balance not in BALANCERS:
            raise ValueError(f"load_balance must be one of {', '.join(BALANCERS)}, "
                             f"not {self.load_balance!r}")
        _number("num_loops", self.num_loops, minimum=1, integer=True)
        _number("workers", self.workers, minimum=1, integer=True)
        _number("idle_timeout", self.idle_timeout, minimum=0, allow_none=True, exclusive=True)
        _number("tcp_keepalive", self.tcp_keepalive, minimum=1, allow_none=True)
        _number("backlog", self.backlog, minimum=1, integer=True)
        _number("max_connections", self.max_connections, minimum=1, integer=True, allow_none=True)
        _number("read_buffer_size", self.read_buffer_size, minimum=1024, integer=True)
        _number("write_high_water", self.write_high_water, minimum=1, integer=True)
        _number("write_low_water", self.write_low_water, minimum=0, integer=True)
        _number("write_limit", self.write_limit, minimum=1, integer=True)
        _number("view_threshold", self.view_threshold, minimum=0, integer=True, allow_none=True)
        _number("frame_timeout", self.frame_timeout, minimum=0, exclusive=True)
        _number("handshake_timeout", self.handshake_timeout, minimum=0, allow_none=True, exclusive=True)
        _number("slow_callback", self.slow_callback, minimum=0, allow_none=True, exclusive=True)
        _number("max_pending_replies", self.max_pending_replies, minimum=1, integer=True)
        check_name(self.backend)
        if self.write_low_water > self.write_high_water:
            raise ValueError(f"write_low_water ({self.write_low_water}) must not exceed "
                             f"write_high_water ({self.write_high_water})")
        if self.write_limit < self.write_high_water:
            raise ValueError(f"write_limit ({self.write_limit}) must be at least write_high_water "
                             f"({self.write_high_water})")
        if self.network.startswith("udp"):
            if self.ssl is not None:
                raise ValueError("ssl: TLS does not apply to UDP (network="
                                 f"{self.network!r}); DTLS is not supported")
            if self.workers > 1:
                raise ValueError("workers: a UDP server runs in one process; use num_loops "
                                 "(one SO_REUSEPORT socket per loop)")
        if self.metrics_address is not None:
            if not isinstance(self.metrics_address, str):
                raise TypeError(f"metrics_address must be a str 'host:port', "
                                f"not {type(self.metrics_address).__name__}")
            check_port("metrics_address", self.metrics_address)
            from .extras import require
            require("prometheus_client", "metrics_address")
        if not isinstance(self.metrics_path, str) or not self.metrics_path.startswith("/"):
            raise ValueError(f"metrics_path must be a path starting with '/', got {self.metrics_path!r}")
        if self.ssl is not None:
            if not isinstance(self.ssl, _ssl.SSLContext):
                raise TypeError(f"ssl must be a server-side ssl.SSLContext (e.g. "
                                f"ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) with a "
                                f"certificate loaded), not {type(self.ssl).__name__}")
            if self.ssl.check_hostname or self.ssl.protocol == _ssl.PROTOCOL_TLS_CLIENT:
                raise ValueError("ssl is a client-side context (it checks host names); a server "
                                 "needs ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) or "
                                 "ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) with load_cert_chain()")
            if self.network == "unix":
                pass    # TLS over a unix socket is unusual but valid

    def but(self, **changes: Any) -> ServerOptions:
        """A copy with some options changed (validated again)."""
        return replace(self, **changes)


OPTION_NAMES = tuple(f.name for f in fields(ServerOptions))

__all__ = ["BALANCERS", "LoadBalance", "NETWORKS", "Network", "OPTION_NAMES", "ServerOptions",
           "check_handler", "check_number", "check_port"]
