"""Prometheus metrics for a Server, read from its plain counters only when scraped.

The hot path never calls prometheus_client: the loops bump plain ints, `Server.stats()` gathers
them into a dict, and `StatsCollector` turns that dict into metric families at scrape time.
`MetricsExporter` serves them over HTTP on loopback unless told otherwise, from one thread
running a small selector-based HTTP/1.1 server (`HttpServer`); prometheus_client only renders
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
`pygev_connections` (gauge, accepted and dialed), `pygev_connections_open{direction}` (gauge,
"inbound" / "outbound"), `pygev_connections_accepted`, `pygev_connections_opened{direction}`,
`pygev_dial_failures`, `pygev_connections_closed{reason}`, `pygev_received_bytes`,
`pygev_sent_bytes`, `pygev_backpressure_pauses`,
`pygev_loop_turn_seconds` (histogram); with workers also `pygev_workers` (gauge) and
`pygev_worker_restarts`.
"""
from __future__ import annotations

import gzip
import logging
import math
import os
import socket
import threading
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

from .metrics_http import (
    HEAD_TIMEOUT,
    HttpServer,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    Request,
    header_tokens,
)
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
        outbound = s.get("outbound", 0)
        yield GaugeMetricFamily("pygev_connections", "Open connections (accepted and dialed).",
                                value=s["connections"] + outbound)
        yield CounterMetricFamily("pygev_connections_accepted", "Connections accepted.", value=s["accepted"])
        by_direction = GaugeMetricFamily("pygev_connections_open", "Open connections, by direction.",
                                         labels=["direction"])
        by_direction.add_metric(["inbound"], s["connections"])
        by_direction.add_metric(["outbound"], outbound)
        yield by_direction
        opened = CounterMetricFamily("pygev_connections_opened",
                                     "Connections accepted (inbound) or dialed (outbound).",
                                     labels=["direction"])
        opened.add_metric(["inbound"], s["accepted"])
        opened.add_metric(["outbound"], s.get("dialed", 0))
        yield opened
        yield CounterMetricFamily("pygev_dial_failures",
                                  "Dials that did not connect (refused, timed out, no address).",
                                  value=s.get("dial_failed", 0))
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
        dropped = CounterMetricFamily(
            "pygev_datagrams_dropped", "UDP datagrams dropped, by reason (too_long: over "
            "read_buffer_size; queue_full: over write_limit; over_limit, paused, send_error, stop).",
            labels=["reason"],
        )
        for reason, count in s.get("datagrams_dropped", {}).items():
            dropped.add_metric([reason], count)
        yield dropped
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
        self._httpd: HttpServer | None = None
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

    def _respond(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        """The answer to a GET/HEAD: the exposition at our path, 404 elsewhere."""
        target = request.target
        if not target.startswith("/"):
            target = urlsplit(target)._replace(scheme="", netloc="").geturl() or "/"
        if unquote(target.partition("?")[0]) != self._path:
            return 404, [], b"not found\n"
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        output = encoder(self.registry)
        headers = [("Content-Type", content_type)]
        if "gzip" in header_tokens(request.headers.get("accept-encoding", "")):
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
        httpd = HttpServer(sock, self._respond, head_timeout=self.head_timeout,
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
