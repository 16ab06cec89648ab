"""Prometheus metrics for a Server, read from its plain counters only when scraped.

The hot path never calls prometheus_client: the loops bump plain ints, `Server.stats()` gathers
them into a dict, and `StatsCollector` turns that dict into metric families at scrape time.
`MetricsExporter` serves them over HTTP on loopback unless told otherwise, from one thread
running a small selector-based HTTP/1.1 server (`_HttpServer`); prometheus_client only renders
the text (`choose_encoder`, i.e. `generate_latest` / OpenMetrics as the scraper's Accept asks).

The HTTP side is bounded whatever the clients do: one thread for any number of connections;
at most `MAX_CONNECTIONS` open (past it a new one evicts the connection that has waited longest
for a request head, or is closed at once if none is waiting); a request head must arrive within
`HEAD_TIMEOUT` seconds and fit in `MAX_HEAD_BYTES` (else 408 / 431); a response must be taken
within `HEAD_TIMEOUT` too.  GET and HEAD of the metrics path answer 200, other paths 404, other
methods 405 (OPTIONS 204), malformed heads and requests with a body 400.  HTTP/1.1 connections
are kept alive between scrapes (idle ones are closed after `HEAD_TIMEOUT`); HTTP/1.0, errors and
`Connection: close` close after the response.

Workers: with `workers=N` the exporter runs in the supervising parent only.  Each worker child
pushes its `stats()` to the parent over a pipe every `reactor.workers.PUBLISH_INTERVAL` seconds
(and once more when it stops); the parent's `WorkerPool.stats()` sums the latest figures of
every worker, keeping the counters of workers that died, so one scrape of the parent shows the
whole server.  Figures from a worker may therefore lag by up to one publish interval.

Exposed families (counters get prometheus_client's `_total` suffix on the wire):
`pygev_connections` (gauge), `pygev_connections_accepted`, `pygev_connections_closed{reason}`,
`pygev_received_bytes`, `pygev_sent_bytes`, `pygev_backpressure_pauses`,
`pygev_loop_turn_seconds` (histogram); with workers also `pygev_workers` (gauge) and
`pygev_worker_restarts`.
"""
from __future__ import annotations

import email.utils
import gzip
import logging
import math
import os
import re
import selectors
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .stats import CLOSE_REASONS, Stats

log = logging.getLogger("reactor.metrics")

def _bound_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class StatsCollector(Collector):
    """A prometheus_client Collector that reads a stats dict (Server.stats() format) per scrape."""

    def __init__(self, read_stats: Callable[[], Stats], extra: Callable[[], Iterable[Metric]] | None = None):
        self._read_stats = read_stats
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        s = self._read_stats()
        yield GaugeMetricFamily("pygev_connections", "Open connections.", value=s["connections"])
        yield CounterMetricFamily("pygev_connections_accepted", "Connections accepted.", value=s["accepted"])
        closed = CounterMetricFamily(
            "pygev_connections_closed", "Connections closed, by reason.", labels=["reason"]
        )
        counts = dict.fromkeys(CLOSE_REASONS, 0)
        counts.update(s["closed"])
        for reason, count in counts.items():
            closed.add_metric([reason], count)
        yield closed
        yield CounterMetricFamily(
            "pygev_received_bytes", "Bytes read from sockets.", value=s["received_bytes"]
        )
        yield CounterMetricFamily("pygev_sent_bytes", "Bytes written to sockets.", value=s["sent_bytes"])
        yield CounterMetricFamily(
            "pygev_backpressure_pauses",
            "Times a connection stopped being read because its output passed write_high_water.",
            value=s["backpressure_pauses"],
        )
        buckets = [(_bound_label(b), c) for b, c in s["turn_buckets"]]
        if not buckets or buckets[-1][0] != "+Inf":
            buckets.append(("+Inf", s["turn_count"]))
        yield HistogramMetricFamily(
            "pygev_loop_turn_seconds",
            "Time event-loop turns spent handling ready sockets, timers and writes.",
            buckets=buckets,
            sum_value=s["turn_sum"],
        )
        if self._extra is not None:
            yield from self._extra()


def parse_host_port(address: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" / ":port"; an empty host means loopback, not all interfaces.
    Raises ValueError naming `address` when it is not of that form or the port is not 0..65535."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"metrics address {address!r} is not host:port")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"metrics address {address!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics address {address!r}: port {port} is not in 0..65535")
    return host.strip("[]") or default_host, port


#: Seconds a connection has to send a whole request head (counted from accept, or from the end of
#: the previous response on a kept-alive connection) and, separately, to take a whole response.
HEAD_TIMEOUT = 10.0
#: Largest request head (request line and header lines) read; a longer one is answered 431.
MAX_HEAD_BYTES = 8192
#: Most connections open at once on the metrics port.
MAX_CONNECTIONS = 64
#: After an error response, how long the unread rest of a request is drained (so the client sees
#: the response rather than a reset) before the connection is closed anyway.
LINGER_TIMEOUT = 2.0
#: Bytes drained that way at most.
LINGER_BYTES = 64 << 10
#: How long accepting pauses when accept() fails for lack of descriptors (EMFILE and the like).
ACCEPT_PAUSE = 0.5

_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 505: "HTTP Version Not Supported"}
_ALLOW = "GET, HEAD, OPTIONS"
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class _Request:
    __slots__ = ("method", "target", "version", "headers")

    def __init__(self, method: str, target: str, version: tuple[int, int], headers: dict[str, str]):
        self.method, self.target, self.version, self.headers = method, target, version, headers


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _find_head_end(buf: bytes | bytearray) -> tuple[int, int]:
    """(end of head, start of what follows) or (-1, -1); accepts bare LF line ends too."""
    crlf, lf = buf.find(b"\r\n\r\n"), buf.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def _parse_head(head: bytes) -> _Request:
    lines = head.decode("latin-1").split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _BadRequest(400, "malformed request line")
    method, target, version_text = parts
    version = _VERSION.fullmatch(version_text)
    if version is None:
        raise _BadRequest(400, "malformed HTTP version")
    if version.group(1) != "1":
        raise _BadRequest(505, f"{version_text} not supported")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        line = line.rstrip("\r")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):     # also rejects obsolete line folding
            raise _BadRequest(400, "malformed header line")
        name, value = name.lower(), value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return _Request(method, target, (1, int(version.group(2))), headers)


def _tokens(value: str) -> set[str]:
    return {t.split(";")[0].strip().lower() for t in value.split(",")}


class _Conn:
    """One client connection of `_HttpServer`: reading a head, writing a response, or lingering."""

    __slots__ = ("sock", "state", "inbuf", "out", "deadline", "close_after", "drained", "events")

    HEAD, WRITE, LINGER = "head", "write", "linger"

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.state = self.HEAD
        self.inbuf = bytearray()
        self.out = memoryview(b"")
        self.deadline = deadline
        self.close_after = False
        self.drained = 0
        self.events = 0


Responder = Callable[[_Request], "tuple[int, list[tuple[str, str]], bytes]"]


class _HttpServer:
    """A single-threaded, selector-driven HTTP/1.1 server of bounded size (see the module doc).

    `run()` serves until `stop()` (thread-safe) and, on the way out, closes every descriptor it
    owns: the listening socket, each connection, the selector and its wake-up socket pair."""

    def __init__(self, listener: socket.socket, respond: Responder, *, head_timeout: float,
                 max_connections: int, max_head_bytes: int):
        self.listener = listener
        self.respond = respond
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self.max_head_bytes = max_head_bytes
        self.conns: dict[int, _Conn] = {}
        self._stopping = False
        self._accept_paused_until = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self.selector = selectors.DefaultSelector()
        try:
            for s in (listener, self._wake_r, self._wake_w):
                s.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ)
            self.selector.register(self._wake_r, selectors.EVENT_READ)
        except BaseException:
            self.forget()
            raise

    # ---- control (any thread) ---------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def forget(self) -> None:
        """Close every descriptor without touching the (possibly shared) selector registrations:
        for a forked child, where the serving thread does not exist, and for a failed start."""
        for conn in list(self.conns.values()):
            conn.sock.close()
        self.conns.clear()
        for s in (self.listener, self._wake_r, self._wake_w):
            s.close()
        self.selector.close()

    # ---- the serving thread -----------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stopping:
                now = time.monotonic()
                self._expire(now)
                timeout = self._next_timeout(now)
                for key, mask in self.selector.select(timeout):
                    if self._stopping:
                        break
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        conn = self.conns.get(key.fd)
                        if conn is not None:
                            self._guarded(self._on_ready, conn, mask)
        except Exception:
            log.exception("metrics HTTP server failed; metrics are no longer served")
        finally:
            self._close_all()

    def _close_all(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        try:
            self.selector.unregister(self.listener)
        except (KeyError, ValueError):
            pass
        self.forget()

    def _next_timeout(self, now: float) -> float | None:
        deadlines = [conn.deadline for conn in self.conns.values()]
        if self._accept_paused_until:
            deadlines.append(self._accept_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _expire(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self.selector.register(self.listener, selectors.EVENT_READ)
        for conn in [c for c in self.conns.values() if c.deadline <= now]:
            if conn.state == _Conn.HEAD and conn.inbuf.strip():
                try:     # a partial head: say why, if the socket takes it at once, then hang up
                    conn.sock.send(self._response_bytes(408, [("Connection", "close")],
                                                        b"request head not received in time\n"))
                except OSError:
                    pass
            log.debug("metrics connection %s timed out (%s)", conn.sock.fileno(), conn.state)
            self._close(conn)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _accept(self) -> None:
        for _ in range(self.max_connections):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:        # out of descriptors or buffers: back off, do not spin
                log.warning("metrics accept failed (%s); pausing %.1fs", exc, ACCEPT_PAUSE)
                self.selector.unregister(self.listener)
                self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
                return
            if len(self.conns) >= self.max_connections and not self._evict_one():
                sock.close()              # every slot is busy answering: refuse this one at once
                continue
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.head_timeout)
            self.conns[sock.fileno()] = conn
            self._watch(conn, selectors.EVENT_READ)

    def _evict_one(self) -> bool:
        """Make room by closing the connection that has waited longest for a request head."""
        waiting = [c for c in self.conns.values() if c.state == _Conn.HEAD]
        if not waiting:
            return False
        self._close(min(waiting, key=lambda c: c.deadline))
        return True

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if conn.events:
            self.selector.modify(conn.sock, events)
        else:
            self.selector.register(conn.sock, events)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self.conns.get(fd) is conn:
            del self.conns[fd]
        if conn.events:
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.events = 0
        conn.sock.close()

    def _guarded(self, fn: Callable[[_Conn, int], None], conn: _Conn, mask: int) -> None:
        try:
            fn(conn, mask)
        except OSError as exc:            # the peer went away: nothing to tell anyone
            log.debug("metrics connection closed: %s", exc)
            self._close(conn)
        except Exception:
            log.exception("metrics connection failed")
            self._close(conn)

    def _on_ready(self, conn: _Conn, mask: int) -> None:
        if conn.state == _Conn.HEAD:
            data = conn.sock.recv(4096)
            if not data:
                self._close(conn)
                return
            conn.inbuf += data
            self._serve_heads(conn)
        elif conn.state == _Conn.WRITE:
            self._flush(conn)
            if conn.state == _Conn.HEAD and conn.inbuf:    # a pipelined request already waiting
                self._serve_heads(conn)
        else:                             # LINGER: discard what the client still sends
            data = conn.sock.recv(4096)
            conn.drained += len(data)
            if not data or conn.drained >= LINGER_BYTES:
                self._close(conn)

    def _serve_heads(self, conn: _Conn) -> None:
        """Answer every complete head in the buffer (pipelining), one response at a time."""
        while conn.state == _Conn.HEAD:
            del conn.inbuf[:len(conn.inbuf) - len(conn.inbuf.lstrip(b"\r\n"))]  # RFC 9112 2.2
            end, rest = _find_head_end(conn.inbuf)
            if end < 0 and len(conn.inbuf) <= self.max_head_bytes:
                return                    # wait for more (the deadline still runs)
            if end < 0 or end > self.max_head_bytes:
                self._answer(conn, 431, [], b"request head too large\n", close=True)
                return
            head = bytes(conn.inbuf[:end])
            del conn.inbuf[:rest]
            try:
                request = _parse_head(head)
            except _BadRequest as exc:
                self._answer(conn, exc.status, [], f"{exc}\n".encode(), close=True)
                return
            self._answer_request(conn, request)

    def _answer_request(self, conn: _Conn, request: _Request) -> None:
        headers = request.headers
        tokens = _tokens(headers.get("connection", ""))
        keep_alive = request.version >= (1, 1) and "close" not in tokens
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            self._answer(conn, 405, [("Allow", _ALLOW)], f"{request.method} not allowed\n".encode(),
                         close=True)
            return
        length = headers.get("content-length", "0").strip()
        if "transfer-encoding" in headers or not length.isdigit() or int(length) != 0:
            self._answer(conn, 400, [], b"a request body is not accepted here\n", close=True)
            return
        if request.method == "OPTIONS":
            self._answer(conn, 204, [("Allow", _ALLOW)], b"", close=not keep_alive)
            return
        try:
            status, extra, body = self.respond(request)
        except Exception:
            log.exception("metrics exposition failed")
            status, extra, body = 500, [], b"metrics exposition failed\n"
        self._answer(conn, status, extra, body, close=not keep_alive or status >= 500,
                     head_only=request.method == "HEAD")

    @staticmethod
    def _response_bytes(status: int, headers: list[tuple[str, str]], body: bytes,
                        head_only: bool = False) -> bytes:
        if not any(name.lower() == "content-type" for name, _ in headers) and (body or status >= 400):
            headers = [("Content-Type", "text/plain; charset=utf-8"), *headers]
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
                 f"Date: {email.utils.formatdate(usegmt=True)}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if status != 204:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only or status == 204 else head + body

    def _answer(self, conn: _Conn, status: int, headers: list[tuple[str, str]], body: bytes, *,
                close: bool, head_only: bool = False) -> None:
        headers = [*headers, ("Connection", "close" if close else "keep-alive")]
        conn.out = memoryview(self._response_bytes(status, headers, body, head_only))
        conn.close_after = close
        # an error may leave part of the request unread: drain it so the client sees the answer
        conn.drained = 0 if (status >= 400 or conn.inbuf) else -1
        conn.state = _Conn.WRITE
        conn.deadline = time.monotonic() + self.head_timeout
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                self._watch(conn, selectors.EVENT_WRITE)
                return
            conn.out = conn.out[sent:]
        if not conn.close_after:
            conn.state = _Conn.HEAD
            conn.deadline = time.monotonic() + self.head_timeout
            self._watch(conn, selectors.EVENT_READ)
        elif conn.drained < 0:
            self._close(conn)
        else:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.inbuf.clear()
            conn.state = _Conn.LINGER
            conn.deadline = time.monotonic() + min(LINGER_TIMEOUT, self.head_timeout)
            self._watch(conn, selectors.EVENT_READ)


# Exporters alive in this process: a forked worker child closes their listening sockets so the
# metrics port is never held by a child (one at-fork hook for all; they cannot be unregistered).
_live_exporters: weakref.WeakSet[MetricsExporter] = weakref.WeakSet()


def _close_exporters_in_child() -> None:
    for exporter in list(_live_exporters):
        exporter._forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_exporters_in_child)


class MetricsExporter:
    """Serves a Server's metrics as Prometheus text on one HTTP address and path, from one thread.

    `head_timeout`, `max_connections` and `max_head_bytes` default to the module's
    `HEAD_TIMEOUT`, `MAX_CONNECTIONS` and `MAX_HEAD_BYTES` as they are when the exporter is made."""

    def __init__(self, server: Any, *, head_timeout: float | None = None,
                 max_connections: int | None = None, max_head_bytes: int | None = None):
        self._server = server
        self.head_timeout = HEAD_TIMEOUT if head_timeout is None else float(head_timeout)
        self.max_connections = MAX_CONNECTIONS if max_connections is None else int(max_connections)
        self.max_head_bytes = MAX_HEAD_BYTES if max_head_bytes is None else int(max_head_bytes)
        if self.head_timeout <= 0 or self.max_connections < 1 or self.max_head_bytes < 64:
            raise ValueError("metrics exporter: head_timeout > 0, max_connections >= 1 and "
                             "max_head_bytes >= 64 are required")
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[Any, ...] | None = None
        self._path = "/metrics"
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(self._read_stats, self._extra_metrics))

    def _read_stats(self) -> Stats:
        pool = getattr(self._server, "worker_pool", None)
        if pool is not None:
            return pool.stats()
        return self._server.stats()

    def _extra_metrics(self) -> Iterator[Metric]:
        pool = getattr(self._server, "worker_pool", None)
        if pool is None:
            return
        yield GaugeMetricFamily("pygev_workers", "Worker processes alive.", value=pool.alive_count)
        yield CounterMetricFamily(
            "pygev_worker_restarts", "Worker processes restarted after dying.", value=pool.restarts
        )

    def _respond(self, request: _Request) -> tuple[int, list[tuple[str, str]], bytes]:
        """The answer to a GET/HEAD: the exposition at our path, 404 elsewhere."""
        target = request.target
        if not target.startswith("/"):
            target = urlsplit(target)._replace(scheme="", netloc="").geturl() or "/"
        if unquote(target.partition("?")[0]) != self._path:
            return 404, [], b"not found\n"
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        output = encoder(self.registry)
        headers = [("Content-Type", content_type)]
        if "gzip" in _tokens(request.headers.get("accept-encoding", "")):
            output = gzip.compress(output)
            headers.append(("Content-Encoding", "gzip"))
        return 200, headers, output

    def start(self, address: str, path: str = "/metrics") -> None:
        """Bind `address` ("host:port", port 0 allowed, empty host = 127.0.0.1) and serve `path`.

        Raises ValueError for an address that is not host:port, and OSError (with the errno of
        the failure) naming the address when it cannot be resolved or bound."""
        if self._httpd is not None:
            raise RuntimeError("metrics exporter already started")
        host, port = parse_host_port(address)
        self._path = "/" + path.lstrip("/")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {address!r}: {exc.strerror or exc}") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            bound = tuple(sock.getsockname())
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot serve metrics on {address!r}: {exc.strerror or exc}") from exc
        httpd = _HttpServer(sock, self._respond, head_timeout=self.head_timeout,
                            max_connections=self.max_connections, max_head_bytes=self.max_head_bytes)
        thread = threading.Thread(target=httpd.run, name="reactor-metrics", daemon=True)
        try:
            thread.start()
        except BaseException:
            httpd.forget()
            raise
        self._httpd, self._thread, self._address = httpd, thread, bound
        _live_exporters.add(self)
        log.info("metrics on http://%s:%d%s", host, bound[1], self._path)

    @property
    def address(self) -> tuple[Any, ...]:
        """The bound (host, port) (a 4-tuple for IPv6)."""
        if self._httpd is None or self._address is None:
            raise RuntimeError("metrics exporter not started")
        return self._address

    def close(self) -> None:
        """Stop serving, wait for the serving thread (which closes every descriptor it holds:
        listener, connections, selector) and release the port; harmless when called twice."""
        httpd, self._httpd = self._httpd, None
        thread, self._thread = self._thread, None
        _live_exporters.discard(self)
        if httpd is None:
            return
        httpd.stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
            if thread.is_alive():
                log.warning("metrics thread did not stop within 10s; its sockets close when it does")

    def _forget_in_child(self) -> None:
        # After fork the serving thread does not exist in the child: just drop the descriptors
        # (closing them here does not touch the parent's sockets or its epoll registrations).
        httpd, self._httpd = self._httpd, None
        self._thread = None
        if httpd is not None:
            httpd.forget()
