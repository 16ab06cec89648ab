"""Prometheus metrics for a Server, read from its plain counters only when scraped.

The hot path never calls prometheus_client: the loops bump plain ints, `Server._stats()` gathers
them into a dict, and `StatsCollector` turns that dict into metric families at scrape time.
`MetricsExporter` serves them over HTTP (prometheus_client's WSGI app behind a small threaded
wsgiref server) on loopback unless told otherwise.

Workers: with `workers=N` the exporter runs in the supervising parent only.  Each worker child
pushes its `_stats()` to the parent over a pipe every `reactor.workers.PUBLISH_INTERVAL` seconds
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

import logging
import math
import os
import socket
import socketserver
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector

log = logging.getLogger("reactor.metrics")

#: Reasons a connection can close; always exported (as 0 when unseen) so dashboards see every series.
CLOSE_REASONS = ("peer", "local", "reset", "error", "idle", "stop", "bad_input", "over_limit")

Stats = dict[str, Any]


def empty_stats() -> Stats:
    """A `_stats()`-shaped dict with every figure at zero (the sum of no processes)."""
    return {
        "connections": 0,
        "accepted": 0,
        "closed": {reason: 0 for reason in CLOSE_REASONS},
        "received_bytes": 0,
        "sent_bytes": 0,
        "backpressure_pauses": 0,
        "turn_buckets": [],
        "turn_sum": 0.0,
        "turn_count": 0,
    }


def add_stats(total: Stats, part: Stats, *, counters_only: bool = False) -> None:
    """Add `part` into `total` in place.  Histograms are summed bucket by bucket (same bounds
    in every process); `counters_only` leaves the `connections` gauge out (for dead workers)."""
    if not counters_only:
        total["connections"] += part.get("connections", 0)
    for key in ("accepted", "received_bytes", "sent_bytes", "backpressure_pauses", "turn_count"):
        total[key] += part.get(key, 0)
    total["turn_sum"] += part.get("turn_sum", 0.0)
    closed = total["closed"]
    for reason, count in part.get("closed", {}).items():
        closed[reason] = closed.get(reason, 0) + count
    buckets: dict[float, int] = dict(total["turn_buckets"])
    for bound, count in part.get("turn_buckets", ()):
        bound = float(bound)
        buckets[bound] = buckets.get(bound, 0) + count
    total["turn_buckets"] = sorted(buckets.items())


def _bound_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class StatsCollector(Collector):
    """A prometheus_client Collector that reads a stats dict (Server._stats() format) per scrape."""

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
    """Split "host:port" / "[v6]:port" / ":port"; an empty host means loopback, not all interfaces."""
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"metrics address {address!r} is not host:port")
    host = host.strip("[]") or default_host
    return host, int(port)


class _QuietHandler(WSGIRequestHandler):
    """Logs requests at DEBUG on reactor.metrics instead of writing them to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics %s " + format, self.address_string(), *args)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can stall; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


# Exporters alive in this process: a forked worker child closes their listening sockets so the
# metrics port is never held by a child (one at-fork hook for all; they cannot be unregistered).
_live_exporters: weakref.WeakSet[MetricsExporter] = weakref.WeakSet()


def _close_exporters_in_child() -> None:
    for exporter in list(_live_exporters):
        exporter._forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_exporters_in_child)


class MetricsExporter:
    """Serves a Server's metrics as Prometheus text on one HTTP address and path, from a thread."""

    def __init__(self, server: Any):
        self._server = server
        self._httpd: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(self._read_stats, self._extra_metrics))

    def _read_stats(self) -> Stats:
        pool = getattr(self._server, "_worker_pool", None)
        if pool is not None:
            return pool.stats()
        return self._server._stats()

    def _extra_metrics(self) -> Iterator[Metric]:
        pool = getattr(self._server, "_worker_pool", None)
        if pool is None:
            return
        yield GaugeMetricFamily("pygev_workers", "Worker processes alive.", value=pool.alive_count)
        yield CounterMetricFamily(
            "pygev_worker_restarts", "Worker processes restarted after dying.", value=pool.restarts
        )

    def start(self, address: str, path: str = "/metrics") -> None:
        """Bind `address` ("host:port", port 0 allowed, empty host = 127.0.0.1) and serve `path`."""
        if self._httpd is not None:
            raise RuntimeError("metrics exporter already started")
        host, port = parse_host_port(address)
        metrics_app = make_wsgi_app(self.registry)
        path = "/" + path.lstrip("/")

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "/") != path:
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found\n"]
            return metrics_app(environ, start_response)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_MetricsServer", (_ThreadingWSGIServer,), {"address_family": family})
        httpd: _ThreadingWSGIServer = make_server(host, port, app, server_class, _QuietHandler)
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="reactor-metrics", daemon=True
        )
        self._thread.start()
        _live_exporters.add(self)
        log.info("metrics on http://%s:%d%s", host, self.address[1], path)

    @property
    def address(self) -> tuple[Any, ...]:
        """The bound (host, port) (a 4-tuple for IPv6)."""
        if self._httpd is None:
            raise RuntimeError("metrics exporter not started")
        return tuple(self._httpd.socket.getsockname())

    def close(self) -> None:
        """Stop serving and release the port; harmless when called twice."""
        httpd, self._httpd = self._httpd, None
        _live_exporters.discard(self)
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _forget_in_child(self) -> None:
        # After fork the serving thread does not exist in the child: just drop the socket.
        httpd, self._httpd = self._httpd, None
        self._thread = None
        if httpd is not None:
            httpd.socket.close()
