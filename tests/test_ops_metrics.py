"""Prometheus metrics of one server process: the exposition matches what the test did
(connections, bytes, close reasons, backpressure, loop turns), loopback by default, and the
per-worker stats are summed the way the parent of a pre-fork server sums them."""
from __future__ import annotations

import math
import socket
import urllib.error
import urllib.request

import pytest
from support import TIMEOUT, EchoRecorder, connect, recv_exactly, serve, wait_until
from support import scrape_metrics as scrape

from reactor.stats import CLOSE_REASONS, add_stats, empty_stats


def test_scrape_shows_the_connections_bytes_and_close_reasons_the_test_produced() -> None:
    handler = EchoRecorder()
    with serve(handler, metrics_address="127.0.0.1:0") as srv:
        socks = [connect(srv.address) for _ in range(5)]
        handler.wait_connected(5)
        for i, s in enumerate(socks):
            s.sendall(b"m" * (100 + i))
            assert recv_exactly(s, 100 + i) == b"m" * (100 + i)
        # The loop adds a flush's bytes once sendmsg returns, which can be just after the client
        # has the echo in hand: wait for the counters to settle (they must reach exactly 510).
        wait_until(lambda: scrape(srv.metrics_address)["pygev_sent_bytes_total"] >= 510, what="sent bytes")
        during = scrape(srv.metrics_address)
        assert during["pygev_connections"] == 5
        assert during["pygev_connections_accepted_total"] == 5
        assert during["pygev_received_bytes_total"] == during["pygev_sent_bytes_total"] == 510

        for s in socks[:3]:
            s.close()
        conns = handler.wait_connected(5)
        for conn in conns[3:]:
            conn.close()
        for conn in conns:
            handler.wait_closed(conn)
        wait_until(lambda: scrape(srv.metrics_address)["pygev_connections"] == 0, what="gauge back to 0")
        after = scrape(srv.metrics_address)
        assert after['pygev_connections_closed_total{reason="peer"}'] == 3
        assert after['pygev_connections_closed_total{reason="local"}'] == 2
        assert after['pygev_connections_closed_total{reason="reset"}'] == 0
        # the loop-turn histogram: cumulative buckets ending at +Inf == count
        buckets = [v for k, v in after.items() if k.startswith("pygev_loop_turn_seconds_bucket")]
        assert buckets == sorted(buckets)
        turns = after["pygev_loop_turn_seconds_count"]
        assert after['pygev_loop_turn_seconds_bucket{le="+Inf"}'] == turns > 0
        for s in socks[3:]:
            s.close()


def test_backpressure_pauses_are_counted() -> None:
    handler = EchoRecorder()
    payload = bytes(range(256)) * (16 << 10)     # 4 MiB echoed to a client that reads late
    with serve(handler, metrics_address="127.0.0.1:0", write_high_water=64 << 10) as srv:
        with connect(srv.address, rcvbuf=16 << 10) as s:
            s.settimeout(TIMEOUT)
            sent = 0
            s.setblocking(False)
            try:                      # write until the kernel and the server both push back
                while sent < len(payload):
                    sent += s.send(payload[sent:sent + 65536])
            except BlockingIOError:
                pass
            wait_until(lambda: scrape(srv.metrics_address)["pygev_backpressure_pauses_total"] >= 1,
                       what="a backpressure pause")
            s.setblocking(True)
            s.settimeout(TIMEOUT)
            s.sendall(payload[sent:])
            assert recv_exactly(s, len(payload)) == payload


def test_metrics_default_to_loopback_and_serve_only_their_path() -> None:
    with serve(EchoRecorder(), metrics_address=":0", metrics_path="/m") as srv:
        host, port = srv.metrics_address[:2]
        assert host == "127.0.0.1"
        assert "pygev_connections" in scrape(srv.metrics_address, "/m")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT)
        assert err.value.code == 404
    with pytest.raises(OSError):       # stop() released the metrics port
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()


def test_no_metrics_address_means_no_exporter() -> None:
    with serve(EchoRecorder()) as srv:
        assert srv.metrics_address is None


def test_worker_stats_add_up_and_a_dead_worker_keeps_only_its_counters() -> None:
    inf = math.inf
    a = {"connections": 2, "accepted": 5, "closed": {"peer": 3}, "received_bytes": 10, "sent_bytes": 9,
         "backpressure_pauses": 1, "turn_buckets": [(0.001, 4), (0.01, 6), (inf, 7)], "turn_sum": 0.5,
         "turn_count": 7}
    b = {"connections": 1, "accepted": 2, "closed": {"peer": 1, "reset": 1}, "received_bytes": 1,
         "sent_bytes": 1, "backpressure_pauses": 0, "turn_buckets": [[0.001, 1], [0.01, 1], [inf, 2]],
         "turn_sum": 0.25, "turn_count": 2}   # lists, as they arrive from a worker over JSON
    total = empty_stats()
    add_stats(total, a)
    add_stats(total, b, counters_only=True)
    assert total["connections"] == 2                      # a dead worker holds no connections
    assert total["accepted"] == 7
    assert total["closed"]["peer"] == 4 and total["closed"]["reset"] == 1 and total["closed"]["idle"] == 0
    assert (total["received_bytes"], total["sent_bytes"], total["backpressure_pauses"]) == (11, 10, 1)
    assert total["turn_buckets"] == [(0.001, 5), (0.01, 7), (inf, 9)]
    assert (total["turn_sum"], total["turn_count"]) == (0.75, 9)


def test_exported_sample_names_as_they_appear_in_the_scrape() -> None:
    with serve(EchoRecorder(), metrics_address="127.0.0.1:0") as srv:
        samples = scrape(srv.metrics_address)
    assert {name.split("{")[0] for name in samples} == {
        "pygev_connections",
        "pygev_connections_open",
        "pygev_connections_accepted_total",
        "pygev_connections_opened_total",
        "pygev_dial_failures_total",
        "pygev_connections_closed_total",
        "pygev_received_bytes_total",
        "pygev_sent_bytes_total",
        "pygev_backpressure_pauses_total",
        "pygev_loop_turn_seconds_bucket",
        "pygev_loop_turn_seconds_count",
        "pygev_loop_turn_seconds_sum",
    }
    reasons = {name for name in samples if name.startswith("pygev_connections_closed_total")}
    assert reasons == {f'pygev_connections_closed_total{{reason="{r}"}}' for r in CLOSE_REASONS}


def test_a_metrics_address_in_use_fails_the_start_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=address):
            with serve(EchoRecorder(), metrics_address=address):
                pass
