"""Admission: who gets in.  The listening sockets, the connection cap, which loop takes a new
connection (the balancer, chosen once from a table), relief when the process runs out of file
descriptors, per-connection socket options, and the peer address accept() returned.

Facts relied on:
- The first loop accepts for all (accept4 inside pg_poll); a connection over `max_connections`
  is closed at once, before any callback.  The count is process-wide and locked (loops run on
  several threads); a connection is counted from accept until its callbacks ran.
- On EMFILE/ENFILE accept() fails while the pending connection stays queued, so a loop would
  spin: a spare descriptor is closed to accept and drop one client, and accepting pauses.
- accept4 returns the peer's address; the glue keeps it per fd (ADDR_ENTRY bytes, a
  sockaddr_in6 is 28), so `peer_addr` works even after a reset, when getpeername() fails.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ._native import ffi, lib
from .options import ServerOptions
from .sockaddr import decode_sockaddr
from .udp import bind_sockets, is_udp

if TYPE_CHECKING:
    from .loop import EventLoop

log = logging.getLogger("reactor.server")

ADDR_ENTRY = 32             # bytes of accept's peer address kept per fd
_ACCEPT_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_PAUSE = 0.1          # seconds without accepting after the process ran out of descriptors


def fd_table_size() -> int:
    """Entries of the per-fd tables (flags, peer addresses): the fd hard limit, bounded."""
    try:
        import resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    except (ImportError, ValueError, OSError):
        hard = 65536
    if hard < 0 or hard > (1 << 22):
        hard = 1 << 22
    return max(hard, 1024)


def parse_address(address: str, network: str) -> tuple[socket.AddressFamily, Any]:
    """(family, sockaddr) for `address`: "host:port", ":port" (all IPv4 interfaces), "[v6]:port",
    or a filesystem path for network="unix"."""
    if network == "unix":
        return socket.AF_UNIX, address
    host, _, port_text = address.rpartition(":")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if network in ("tcp6", "udp6") or (network in ("tcp", "udp") and ":" in host):
        family = socket.AF_INET6
    else:
        family = socket.AF_INET
    if not host:
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    kind = socket.SOCK_DGRAM if is_udp(network) else socket.SOCK_STREAM
    info = socket.getaddrinfo(host, port, family, kind, 0, socket.AI_PASSIVE)
    return family, info[0][4]


def format_address(address: Any) -> str:
    """An address tuple back as "host:port" ("[v6]:port"); a unix path as it is."""
    if isinstance(address, tuple):
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def sock_name(fd: int, peer: bool) -> Any:
    """getpeername() / getsockname() of a raw fd, or None."""
    if fd < 0:
        return None
    s = socket.socket(fileno=fd)
    try:
        return s.getpeername() if peer else s.getsockname()
    except OSError:
        return None
    finally:
        s.detach()


class AddressBook:
    """The peer address accept() returned for each fd (filled by the accepting loop's glue)."""

    def __init__(self) -> None:
        self.size = fd_table_size()
        self.table = ffi.new("char[]", ADDR_ENTRY * self.size)

    def peer(self, fd: int) -> Any:
        if 0 <= fd < self.size:
            raw = bytes(ffi.buffer(self.table + fd * ADDR_ENTRY, ADDR_ENTRY))
            if raw[0] or raw[1]:
                addr = decode_sockaddr(raw)
                if addr is not None:
                    return addr
        return sock_name(fd, True)

    @staticmethod
    def local(fd: int) -> Any:
        return sock_name(fd, False)


class Admission:
    """The accepting side of one server process."""

    def __init__(self, options: ServerOptions, loops: list[EventLoop]) -> None:
        self._opts = options
        self._loops = loops
        self.family, self._sockaddr = parse_address(options.address, options.network)
        self.reuse_port = options.reuse_port or options.workers > 1
        self.listeners: list[socket.socket] = []
        self.datagram = is_udp(options.network)
        self.datagram_sockets: list[socket.socket] = []     # UDP: one per loop (udp.py serves them)
        self.address: Any = None
        self._unlink_path: str | None = None
        self.addresses = AddressBook()
        self._balance = _BALANCERS[options.load_balance]
        self._rr = 0
        self._count = 0
        self._count_lock = threading.Lock()
        self._spare_fd = -1
        self._last_accept_warning = 0.0
        self.refused = 0

    # ------------------------------------------------------------------------------------
    # listeners
    # ------------------------------------------------------------------------------------
    def bind(self) -> Any:
        """Create and bind the listening socket (idempotent); returns the bound address."""
        if self.listeners or self.datagram_sockets:
            return self.address
        if self.datagram:
            self.datagram_sockets = bind_sockets(self.family, self._sockaddr, len(self._loops),
                                                 self.reuse_port)
            self.address = self.datagram_sockets[0].getsockname()
            return self.address
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            if self.family == socket.AF_UNIX:
                self._remove_stale_unix_socket(self._sockaddr)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(self._sockaddr)
            sock.listen(self._opts.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        if self.family == socket.AF_UNIX:
            self._unlink_path = self._sockaddr
        self.listeners.append(sock)
        self.address = sock.getsockname()
        return self.address

    def adopt_listeners(self, listeners: list[socket.socket], address: Any) -> None:
        """Serve sockets bound elsewhere (a worker inherits its parent's unix listener); their
        path stays the parent's to remove."""
        self.listeners = list(listeners)
        self.address = address

    @staticmethod
    def _remove_stale_unix_socket(path: str) -> None:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass

    def close_listeners(self) -> None:
        for sock in self.listeners:
            sock.close()
        self.listeners.clear()
        if self._unlink_path is not None:
            try:
                os.unlink(self._unlink_path)
            except OSError:
                pass
            self._unlink_path = None

    def open(self) -> None:
        self._spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        self.close_listeners()
        for sock in self.datagram_sockets:     # closed by their loops already, unless start failed
            sock.close()
        if self._spare_fd >= 0:
            os.close(self._spare_fd)
            self._spare_fd = -1

    # ------------------------------------------------------------------------------------
    # called from the loops
    # ------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Connections accepted and not yet finished, across all loops."""
        return self._count

    def on_accept(self, loop: EventLoop, fd: int, addr_hash: int) -> None:
        """A new connection arrived on `loop` (the first one): cap, balance, hand over."""
        cap = self._opts.max_connections
        with self._count_lock:
            full = cap is not None and self._count >= cap
            if not full:
                self._count += 1
        if full:
            lib.pg_close(fd)
            loop.closer.count("over_limit")
            log.debug("connection refused: max_connections=%d reached", cap)
            return
        loop.accepted += 1
        target = self._balance(self, addr_hash)
        if target is loop:
            loop.adopt_now(fd)
        else:
            target.adopt(fd)

    def pick(self, key: int) -> EventLoop:
        """The loop the balancer gives a new connection (`key` stands in for the source hash)."""
        return self._balance(self, key)

    def admit(self) -> bool:
        """Count one more connection (a new UDP peer) unless max_connections is reached."""
        cap = self._opts.max_connections
        with self._count_lock:
            if cap is not None and self._count >= cap:
                return False
            self._count += 1
        return True

    def released(self) -> None:
        """A connection counted by on_accept is gone."""
        with self._count_lock:
            self._count -= 1

    def on_accept_error(self, loop: EventLoop, listen_fd: int, err: int) -> None:
        """accept() failed.  Out of descriptors: shed one pending client with the spare fd and
        stop accepting briefly, so the loop neither spins nor stops serving others."""
        now = time.monotonic()
        if now - self._last_accept_warning >= 1.0:
            self._last_accept_warning = now
            log.warning("accept failed: %s", os.strerror(err))
        if err in _ACCEPT_EXHAUSTED and self._spare_fd >= 0:
            os.close(self._spare_fd)
            self._spare_fd = -1
            for sock in self.listeners:
                if sock.fileno() == listen_fd:
                    try:
                        sock.accept()[0].close()
                    except OSError:
                        pass
            try:
                self._spare_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
        loop.pause_listener(listen_fd, _ACCEPT_PAUSE)

    def configure(self, fd: int) -> None:
        """Per-connection socket options (keepalive), set when a loop adopts the fd."""
        keepalive = self._opts.tcp_keepalive
        if keepalive is None or self.family == socket.AF_UNIX:
            return
        setopt = lib.pg_setsockopt_int
        setopt(fd, socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(keepalive))
        if hasattr(socket, "TCP_KEEPIDLE"):
            setopt(fd, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        if hasattr(socket, "TCP_KEEPINTVL"):
            setopt(fd, socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
        if hasattr(socket, "TCP_KEEPCNT"):
            setopt(fd, socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)

    @property
    def nodelay(self) -> bool:
        return self._opts.tcp_nodelay and self.family != socket.AF_UNIX


# ----------------------------------------------------------------------------------------
# load balancing: which loop gets a new connection
# ----------------------------------------------------------------------------------------
def _round_robin(adm: Admission, addr_hash: int) -> EventLoop:
    loops = adm._loops
    adm._rr = (adm._rr + 1) % len(loops)
    return loops[adm._rr]


def _least_connections(adm: Admission, addr_hash: int) -> EventLoop:
    return min(adm._loops, key=lambda loop: loop.connection_count + loop.backlog)


def _source_addr_hash(adm: Admission, addr_hash: int) -> EventLoop:
    return adm._loops[addr_hash % len(adm._loops)]


_BALANCERS: dict[str, Callable[[Admission, int], EventLoop]] = {
    "round_robin": _round_robin,
    "least_connections": _least_connections,
    "source_addr_hash": _source_addr_hash,
}

__all__ = ["ADDR_ENTRY", "AddressBook", "Admission", "fd_table_size", "format_address",
           "parse_address", "sock_name"]
