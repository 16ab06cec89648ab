"""Dialing: from `loop.connect(address, handler, ...)` to a connected OutboundConnection.

Rules:
- connect() checks its arguments in the caller's thread (TypeError / ValueError naming them),
  returns the connection at once and never blocks; the dial itself runs on the loop.
- A numeric address is used as it is (getaddrinfo with AI_NUMERICHOST does no lookup); a name
  is resolved by getaddrinfo in a resolver thread (`RESOLVER_THREADS` at most, daemons), whose
  answer is posted back to the loop.  The loop never waits for a lookup.
- The resolved addresses are tried in getaddrinfo's order ("localhost": ::1 before 127.0.0.1
  where both exist): a non-blocking connect (EINPROGRESS), write interest with PG_F_PYREAD set,
  so the poll only reports the socket; then SO_ERROR tells.  A failure closes that socket and
  tries the next address at the next turn (no row of this poll can reach the new socket); the
  last failure ends the dial with its OSError (ConnectionRefusedError, ...).
- `timeout` covers the lookup and every attempt: the dial ends with TimeoutError.
- A dial that fails, is closed first, or meets the loop's stop runs only on_close(conn, error)
  (error None for close() and stop()); on_connect runs once connected (before TLS is
  established: sends wait for the handshake, as on an accepted connection).
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import ssl as _ssl
import threading
from typing import TYPE_CHECKING, Any, Callable

from ._native import F_PYREAD, KIND_CONN, lib
from .connection import CLOSED
from .options import check_handler, check_number
from .outbound import OutboundConnection, Side
from .protocol import DefaultProtocol
from .tls import TlsSession
from .udp import dial_udp

if TYPE_CHECKING:
    from .loop import EventLoop
    from .timers import Timer

log = logging.getLogger("reactor.dial")

RESOLVER_THREADS = 4
TCP_NETWORKS = ("tcp", "tcp4", "tcp6")
_FAMILIES = {"tcp": socket.AF_UNSPEC, "tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}


# ----------------------------------------------------------------------------------------
# name lookups off the loop
# ----------------------------------------------------------------------------------------
class _Resolver:
    """getaddrinfo in a few daemon threads (a hung lookup never holds the interpreter's exit)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple]
        self._lock: threading.Lock
        self._threads: int
        self._idle: int
        self._reset()

    def _reset(self) -> None:
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = self._idle = 0

    def submit(self, host: str, port: int, family: int,
               done: Callable[[list | None, BaseException | None], None]) -> None:
        with self._lock:
            spawn = self._idle == 0 and self._threads < RESOLVER_THREADS
            if spawn:
                self._threads += 1
        self._jobs.put((host, port, family, done))
        if spawn:
            threading.Thread(target=self._work, name="reactor-resolver", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            host, port, family, done = self._jobs.get()
            with self._lock:
                self._idle -= 1
            try:
                infos: list | None = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
                error: BaseException | None = None
            except OSError as exc:
                infos, error = None, exc
            try:
                done(infos, error)
            except Exception:
                log.exception("posting a lookup result failed")

    def forget(self) -> None:
        """After fork: the threads stayed in the parent."""
        self._reset()


_resolver = _Resolver()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_resolver.forget)


# ----------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------
def check_tls(ssl: Any, server_hostname: Any) -> Any:
    """The client-side SSLContext to use (None: plain TCP); ssl=True means the default one."""
    if server_hostname is not None:
        if not isinstance(server_hostname, str):
            raise TypeError(f"server_hostname must be a str, not {type(server_hostname).__name__}")
        if ssl is None or ssl is False:
            raise ValueError("server_hostname is only meaningful with ssl= (a client context)")
    if ssl is None or ssl is False:
        return None
    if ssl is True:
        return _ssl.create_default_context()
    if not isinstance(ssl, _ssl.SSLContext):
        raise TypeError(f"ssl must be a client-side ssl.SSLContext (ssl.create_default_context()) "
                        f"or True, not {type(ssl).__name__}")
    if ssl.protocol == _ssl.PROTOCOL_TLS_SERVER:
        raise ValueError("ssl is a server-side context; connect() needs a client context such as "
                         "ssl.create_default_context() (it verifies the server's certificate)")
    return ssl


def split_address(address: Any, network: str) -> tuple[str, int]:
    if not isinstance(address, str):
        raise TypeError(f"address must be a str ('host:port', '[v6]:port' or a unix path), "
                        f"not {type(address).__name__}")
    if network == "unix":
        if not address:
            raise ValueError("address must be a filesystem path for network='unix'")
        return address, 0
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port (e.g. '127.0.0.1:6379')")
    if not 0 < int(port) <= 65535:
        raise ValueError(f"address {address!r}: port {port} is outside 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"address {address!r} has no host to connect to")
    return host, int(port)


def numeric(host: str, port: int, family: int) -> list[tuple[int, Any]] | None:
    """The address of a numeric host without any lookup; None for a name."""
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except socket.gaierror:
        return None
    return [(info[0], info[4]) for info in infos]


# ----------------------------------------------------------------------------------------
# one dial, and the loop's dialer
# ----------------------------------------------------------------------------------------
class Dial:
    """The state of one connect() until it connected or failed."""

    __slots__ = ("conn", "address", "host", "port", "family", "addrs", "index", "fd", "timeout",
                 "timer", "error", "ssl", "server_hostname", "done")

    def __init__(self, conn: OutboundConnection, address: str, host: str, port: int, family: int,
                 timeout: float | None, ssl: Any, server_hostname: str | None) -> None:
        self.conn = conn
        self.address = address
        self.host, self.port, self.family = host, port, family
        self.addrs: list[tuple[int, Any]] | None = None
        self.index = 0
        self.fd = -1
        self.timeout = timeout
        self.timer: Timer | None = None
        self.error: BaseException | None = None
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.done = False


class Dialer:
    """The dials of one event loop (their sockets, timers) and its outbound counters."""

    def __init__(self, loop: EventLoop) -> None:
        self._loop = loop
        self.by_fd: dict[int, Dial] = {}
        self._active: set[Dial] = set()
        self.open = 0           # dialed connections open now
        self.dialed = 0         # dials that connected, ever
        self.failed = 0         # dials that failed (refused, timed out, no address), ever

    def connect(self, address: Any, handler: Any, *, network: str = "tcp", protocol: Any = None,
                timeout: float | None = None, ssl: Any = None,
                server_hostname: str | None = None) -> OutboundConnection:
        """See EventLoop.connect."""
        if isinstance(network, str) and network.startswith("udp"):
            return self._connect_udp(address, handler, network, protocol, ssl)
        if network not in TCP_NETWORKS and network != "unix":
            raise ValueError(f"network must be one of tcp, tcp4, tcp6, unix, not {network!r}")
        check_handler(handler, protocol)
        check_number("timeout", timeout, minimum=0, allow_none=True, exclusive=True)
        context = check_tls(ssl, server_hostname)
        host, port = split_address(address, network)
        loop = self._loop
        if loop.finished:
            raise RuntimeError("this event loop has stopped; connect() needs a running one")
        if context is not None and server_hostname is None and network != "unix":
            server_hostname = host
        opts = loop.server.options
        side = Side(handler, protocol if protocol is not None else DefaultProtocol(),
                    opts.read_buffer_size, opts.view_threshold)
        conn = OutboundConnection(loop, side)
        family = socket.AF_UNIX if network == "unix" else _FAMILIES[network]
        dial = side.dial = Dial(conn, address, host, port, family, timeout, context, server_hostname)
        if network == "unix":
            dial.addrs = [(socket.AF_UNIX, host)]
        else:
            dial.addrs = numeric(host, port, family)
        loop.call_soon(self.begin, dial)        # callbacks never run inside connect() itself
        return conn

    # ------------------------------------------------------------------------------------
    # on the loop
    # ------------------------------------------------------------------------------------
    def _connect_udp(self, address: Any, handler: Any, network: str, protocol: Any,
                     ssl: Any) -> Any:
        """A connected UDP socket's connection (udp.dial_udp): datagrams, no protocol, no TLS."""
        if protocol is not None and type(protocol) is not DefaultProtocol:
            raise ValueError(f"protocol: protocols do not apply to UDP (network={network!r})")
        if ssl is not None:
            raise ValueError(f"ssl: TLS does not apply to UDP (network={network!r})")
        opts = self._loop.server.options
        return dial_udp(self._loop, address, handler, network=network,
                        idle_timeout=opts.idle_timeout, read_buffer_size=opts.read_buffer_size)

    def begin(self, dial: Dial) -> None:
        loop = self._loop
        if loop.stopping:
            self.fail(dial, ConnectionAbortedError("the event loop is stopping"))
            return
        if dial.done:           # closed before it began
            return
        self._active.add(dial)
        if dial.timeout is not None:
            dial.timer = loop.run_after(dial.timeout, self._expire, dial)
        if dial.addrs is None:
            _resolver.submit(dial.host, dial.port, dial.family,
                             lambda infos, error: loop.call_soon(self._resolved, dial, infos, error))
        else:
            self._next(dial)

    def _resolved(self, dial: Dial, infos: list | None, error: BaseException | None) -> None:
        if dial.done:
            return
        if error is not None or not infos:
            self.fail(dial, error or OSError(f"no address for {dial.host!r}"))
            return
        seen = []
        for info in infos:
            entry = (info[0], info[4])
            if entry not in seen:
                seen.append(entry)
        dial.addrs = seen
        self._next(dial)

    def _next(self, dial: Dial) -> None:
        """Try the next address; when none is left the dial fails with the last error."""
        if dial.done:
            return
        addrs = dial.addrs or []
        loop = self._loop
        while dial.index < len(addrs):
            family, sockaddr = addrs[dial.index]
            dial.index += 1
            dial.conn._peer = sockaddr          # the address being dialed (peer_addr)
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:
                dial.error = exc
                continue
            try:
                sock.setblocking(False)
                if family != socket.AF_UNIX and loop.server.options.tcp_nodelay:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = sock.connect_ex(sockaddr)
            except OSError as exc:
                sock.close()
                dial.error = exc
                continue
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                dial.error = OSError(err, f"connect to {_where(sockaddr)}: {os.strerror(err)}")
                continue
            fd = sock.detach()
            dial.fd = fd
            self.by_fd[fd] = dial
            loop.set_flag(fd, F_PYREAD)
            try:
                loop.poller.add(fd, KIND_CONN, False, True)
            except OSError as exc:
                self._drop_socket(dial)
                dial.error = exc
                continue
            if err == 0:
                self._connected(dial)
            return
        self.fail(dial, dial.error or OSError(f"no address to connect to for {dial.address!r}"))

    def ready(self, fd: int) -> None:
        """The poll reported a dialing socket: connected, or failed (SO_ERROR)."""
        dial = self.by_fd.get(fd)
        if dial is None:
            return
        sock = socket.socket(fileno=fd)
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if not err:
                try:
                    sock.getpeername()
                except OSError as exc:
                    if exc.errno == errno.ENOTCONN:
                        return          # still in progress (a stale report)
                    err = exc.errno or errno.ECONNREFUSED
        finally:
            sock.detach()
        if not err:
            self._connected(dial)
            return
        addrs = dial.addrs or []
        where = _where(addrs[dial.index - 1][1]) if dial.index else dial.address
        dial.error = OSError(err, f"connect to {where}: {os.strerror(err)}")
        self._drop_socket(dial)
        self._loop.call_soon(self._next, dial)

    def _connected(self, dial: Dial) -> None:
        loop = self._loop
        fd = dial.fd
        self.by_fd.pop(fd, None)
        dial.fd = -1                    # the connection owns the fd now
        self._end(dial)
        conn = dial.conn
        side = conn._side
        conn._fd = fd
        conn._last = loop.now
        sock = socket.socket(fileno=fd)
        try:
            conn._peer = sock.getpeername()
            conn._local = sock.getsockname()
        except OSError:
            pass
        finally:
            sock.detach()
        loop.conns[fd] = conn
        side.up = True
        self.open += 1
        self.dialed += 1
        if dial.family != socket.AF_UNIX:
            loop.server.admission.configure(fd)
        loop.update_interest(conn)
        try:
            if dial.ssl is not None:
                tls = conn._tls = TlsSession(dial.ssl, server_side=False,
                                             server_hostname=dial.server_hostname)
                timeout = loop.server.options.handshake_timeout
                if timeout is not None:
                    conn._deadline = loop.now + timeout
                loop.out.wire(conn, tls.start())
            side.protocol.connection_made(conn)
            side.replay(conn)
            side.handler.on_connect(conn)
        except Exception as exc:
            loop.closer.fail(conn, exc)

    def _expire(self, dial: Dial) -> None:
        if not dial.done:
            self.fail(dial, TimeoutError(f"connect to {dial.address} timed out after "
                                         f"{dial.timeout} s"))

    def fail(self, dial: Dial, error: BaseException | None) -> None:
        """End a dial that did not connect: only on_close(conn, error) runs."""
        if dial.done:
            return
        self._drop_socket(dial)
        self._end(dial)
        conn = dial.conn
        conn._state = CLOSED
        conn._error = error
        conn._side.early = []
        conn._side.early_bytes = 0
        if error is not None:
            self.failed += 1
            log.debug("dial to %s failed: %s", dial.address, error)
        handler = conn._side.handler
        try:
            handler.on_close(conn, error)
        except Exception:
            log.exception("%s.on_close raised", type(handler).__name__)

    def abandon(self, conn: OutboundConnection, error: BaseException | None) -> None:
        """close() on a connection whose dial may still run (loop thread)."""
        if conn._side.up:
            self._loop.closer.close(conn, error, "local")
        elif conn._side.dial is not None:
            self.fail(conn._side.dial, error)

    def finished(self, conn: Any) -> None:
        """A dialed connection closed (closing.py)."""
        self.open -= 1

    def stop(self) -> None:
        """The loop stops: every dial still running ends (on_close(conn, None))."""
        for dial in list(self._active):
            self.fail(dial, None)

    def _end(self, dial: Dial) -> None:
        dial.done = True
        self._active.discard(dial)
        if dial.timer is not None:
            dial.timer.cancel()
            dial.timer = None

    def _drop_socket(self, dial: Dial) -> None:
        fd = dial.fd
        if fd >= 0:
            self.by_fd.pop(fd, None)
            dial.fd = -1
            self._loop.set_flag(fd, 0)
            lib.pg_close(fd)            # closing the last descriptor leaves the epoll set too


def _where(sockaddr: Any) -> str:
    if isinstance(sockaddr, tuple):
        host = sockaddr[0]
        return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"
    return str(sockaddr)


__all__ = ["Dial", "Dialer", "RESOLVER_THREADS", "check_tls", "split_address"]
