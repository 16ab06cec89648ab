"""The metrics exporter's HTTP side is bounded: one thread whatever the number of clients, a cap
on open connections, a deadline for the request head, proper 4xx answers, and close() leaves
no thread and no descriptor behind.  Everything talks to loopback."""
from __future__ import annotations

import errno
import gzip
import os
import select
import socket
import threading
import weakref
from collections.abc import Iterator

import pytest
from support import TIMEOUT, closed_by_peer, open_fds, recv_exactly, recv_to_eof, wait_until
from support import scrape_metrics as scrape

from reactor import metrics
from reactor.metrics import MetricsExporter
from reactor.stats import empty_stats


class FakeServer:
    """What the exporter reads from a Server: `stats()` (and no worker pool)."""

    def __init__(self) -> None:
        self.figures = empty_stats()

    def stats(self) -> dict:
        return self.figures


@pytest.fixture
def exporter() -> Iterator[MetricsExporter]:
    ex = MetricsExporter(FakeServer(), head_timeout=TIMEOUT)
    ex.start("127.0.0.1:0")
    yield ex
    ex.close()


def tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def dial(ex: MetricsExporter) -> socket.socket:
    return socket.create_connection(ex.address[:2], timeout=TIMEOUT)


_pending: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response (Content-Length framed): status, headers (lower-case names), body.
    Bytes past it (a pipelined answer) are kept for the next call on the same socket."""
    buf = _pending.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, f"EOF inside a response head: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = 0 if head_only else int(headers.get("content-length", "0"))
    if len(rest) < length:
        rest += recv_exactly(sock, length - len(rest))
    body, extra = rest[:length], rest[length:]
    if extra:
        _pending[sock] = extra
    return int(status_line.split(" ")[1]), headers, body


def request(ex: MetricsExporter, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with dial(ex) as s:
        s.sendall(raw)
        return read_response(s, head_only=raw.startswith(b"HEAD "))


def eof_count(socks: list[socket.socket]) -> int:
    """How many of `socks` the peer has closed (readable and at EOF, or reset)."""
    n = 0
    for s in socks:
        if select.select([s], [], [], 0)[0]:
            try:
                n += s.recv(1, socket.MSG_PEEK) == b""
            except ConnectionError:
                n += 1
    return n


# ---- bounds ---------------------------------------------------------------------------------
def test_200_idle_connections_hold_no_thread_and_a_scrape_still_answers(exporter: MetricsExporter) -> None:
    threads_before, tasks_before, fds_before = threading.active_count(), tasks(), len(open_fds())
    socks = [dial(exporter) for _ in range(200)]
    try:
        # past the cap the exporter closes connections (the ones waiting longest for a head)
        wait_until(lambda: eof_count(socks) >= 200 - metrics.MAX_CONNECTIONS, what="excess closed")
        assert threading.active_count() == threads_before
        assert tasks() == tasks_before
        # the exporter holds at most MAX_CONNECTIONS of them (the other 200 fds are our clients)
        assert len(open_fds()) - fds_before - 200 <= metrics.MAX_CONNECTIONS
        samples = scrape(exporter.address)
        assert samples["pygev_connections_accepted_total"] == 0
        assert threading.active_count() == threads_before and tasks() == tasks_before
    finally:
        for s in socks:
            s.close()


def test_at_the_cap_a_new_connection_evicts_the_one_waiting_longest() -> None:
    ex = MetricsExporter(FakeServer(), head_timeout=TIMEOUT, max_connections=2)
    ex.start("127.0.0.1:0")
    try:
        oldest, newer = dial(ex), dial(ex)
        oldest.sendall(b"GET /met")                  # a partial head does not protect it
        wait_until(lambda: len(ex._httpd.conns) == 2 if ex._httpd else False, what="both accepted")
        assert "pygev_connections" in scrape(ex.address)
        assert closed_by_peer(oldest)
        newer.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(newer)[0] == 200
        oldest.close()
        newer.close()
    finally:
        ex.close()


def test_a_partial_head_is_answered_408_and_closed_after_the_head_timeout() -> None:
    ex = MetricsExporter(FakeServer(), head_timeout=0.2)
    ex.start("127.0.0.1:0")
    try:
        with dial(ex) as partial, dial(ex) as silent:
            partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            assert recv_to_eof(partial).startswith(b"HTTP/1.1 408 ")
            assert closed_by_peer(silent)            # nothing sent: closed without a word
        # a slowloris client that keeps sending a byte at a time is closed all the same
        with dial(ex) as dribble:
            closed = False
            for _ in range(int(TIMEOUT / 0.02)):
                try:
                    dribble.sendall(b"X")
                except OSError:
                    closed = True
                if closed or select.select([dribble], [], [], 0.02)[0]:
                    closed = True
                    break
            assert closed, "a client sending a byte at a time was never closed"
            try:
                assert recv_to_eof(dribble).startswith(b"HTTP/1.1 408 ")
            except ConnectionResetError:
                pass                                 # its last byte crossed the close
    finally:
        ex.close()


def test_a_kept_alive_connection_is_closed_when_idle_past_the_timeout() -> None:
    ex = MetricsExporter(FakeServer(), head_timeout=0.2)
    ex.start("127.0.0.1:0")
    try:
        with dial(ex) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_response(s)
            assert (status, headers["connection"]) == (200, "keep-alive")
            assert closed_by_peer(s)
    finally:
        ex.close()


def test_an_oversized_head_is_answered_431(exporter: MetricsExporter) -> None:
    big = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * metrics.MAX_HEAD_BYTES + b"\r\n\r\n"
    with dial(exporter) as s:
        s.sendall(big[:metrics.MAX_HEAD_BYTES + 100])     # no terminator within the cap
        status, headers, _ = read_response(s)
        assert (status, headers["connection"]) == (431, "close")
        assert recv_to_eof(s) == b""


# ---- HTTP answers ---------------------------------------------------------------------------
def test_http_answers(exporter: MetricsExporter) -> None:
    status, headers, body = request(exporter, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"pygev_connections_accepted_total 0.0" in body

    assert request(exporter, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 404
    assert request(exporter, b"GET /metrics/x HTTP/1.1\r\n\r\n")[0] == 404

    status, headers, _ = request(exporter, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert status == 405 and "GET" in headers["allow"]
    status, headers, _ = request(exporter, b"OPTIONS * HTTP/1.1\r\n\r\n")
    assert status == 204 and "GET" in headers["allow"]

    for bad in (b"garbage\r\n\r\n", b"GET /metrics\r\n\r\n", b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
                b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n"):
        status, headers, _ = request(exporter, bad)
        assert (status, headers["connection"]) == (400, "close"), bad
    assert request(exporter, b"GET /metrics HTTP/2.0\r\n\r\n")[0] == 505

    status, headers, body = request(exporter, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0

    # query strings, absolute-form targets and bare-LF heads reach the path too
    assert request(exporter, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")[0] == 200
    assert request(exporter, b"GET http://example/metrics HTTP/1.1\r\n\r\n")[0] == 200
    assert request(exporter, b"GET /metrics HTTP/1.1\n\n")[0] == 200


def test_keep_alive_pipelining_and_http_1_0(exporter: MetricsExporter) -> None:
    with dial(exporter) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n" * 3)        # pipelined: three answers in order
        for _ in range(3):
            status, headers, _ = read_response(s)
            assert (status, headers["connection"]) == (200, "keep-alive")
        s.sendall(b"GET /nope HTTP/1.1\r\n\r\n")                 # a 404 keeps the connection
        assert read_response(s)[0] == 404
        s.sendall(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(s)
        assert (status, headers["connection"]) == (200, "close")
        assert recv_to_eof(s) == b""
    with dial(exporter) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert read_response(s)[1]["connection"] == "close"
        assert recv_to_eof(s) == b""


def test_exposition_negotiates_openmetrics_and_gzip(exporter: MetricsExporter) -> None:
    status, headers, body = request(
        exporter, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = request(exporter, b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n")
    assert headers["content-encoding"] == "gzip"
    assert b"pygev_sent_bytes_total" in gzip.decompress(body)


def test_a_failing_stats_read_answers_500_and_the_exporter_keeps_serving(exporter: MetricsExporter) -> None:
    server = exporter._server
    good = server.figures
    server.figures = {}                                 # KeyError inside collect()
    status, headers, _ = request(exporter, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert (status, headers["connection"]) == (500, "close")
    server.figures = good
    assert request(exporter, b"GET /metrics HTTP/1.1\r\n\r\n")[0] == 200


# ---- lifecycle ------------------------------------------------------------------------------
def test_close_leaves_no_thread_and_no_fd() -> None:
    fds_before = open_fds()
    ex = MetricsExporter(FakeServer())
    ex.start("127.0.0.1:0")
    port = ex.address[1]
    (thread,) = [t for t in threading.enumerate() if t.name == "reactor-metrics"]
    task = f"/proc/self/task/{thread.native_id}"     # other tests' threads may come and go
    clients = [dial(ex) for _ in range(5)]
    clients[0].sendall(b"GET /metr")                            # partial head
    clients[1].sendall(b"GET /metrics HTTP/1.1\r\n\r\n")        # kept alive after its answer
    assert read_response(clients[1])[0] == 200
    wait_until(lambda: ex._httpd is not None and len(ex._httpd.conns) == 5, what="all accepted")
    ex.close()
    ex.close()                                                  # harmless twice
    assert not thread.is_alive()
    assert not any(t.name == "reactor-metrics" for t in threading.enumerate())
    wait_until(lambda: not os.path.exists(task), what="the OS thread gone")
    for c in clients:
        assert closed_by_peer(c)
        c.close()
    assert open_fds() == fds_before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    with pytest.raises(RuntimeError):
        _ = ex.address


def test_a_forked_child_holds_none_of_the_exporters_descriptors(exporter: MetricsExporter) -> None:
    httpd = exporter._httpd
    assert httpd is not None
    with dial(exporter) as client:
        client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        assert read_response(client)[0] == 200
        wait_until(lambda: len(httpd.conns) == 1, what="connection tracked")
        fds = [httpd.listener.fileno(), *httpd.conns]
        pid = os.fork()
        if pid == 0:                                # child: every one of them must be closed
            code = 0
            for fd in fds:
                try:
                    os.fstat(fd)
                    code = 1
                except OSError:
                    pass
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")      # the parent still serves it
        assert read_response(client)[0] == 200


def test_start_names_the_address_it_cannot_use() -> None:
    ex = MetricsExporter(FakeServer())
    for bad in ("nohost", "127.0.0.1:abc", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match=bad):
            ex.start(bad)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=address) as err:
            ex.start(address)
        assert err.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError, match="192.0.2.1:0"):        # TEST-NET: not an address of ours
        ex.start("192.0.2.1:0")
    with pytest.raises(RuntimeError):
        _ = ex.address
    ex.start("127.0.0.1:0")                                     # the failures left it startable
    try:
        with pytest.raises(RuntimeError):
            ex.start("127.0.0.1:0")
    finally:
        ex.close()
