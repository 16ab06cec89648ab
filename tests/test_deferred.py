"""Deferred replies (SPEC "Replies that take time"): on_message returning a concurrent.futures or
asyncio Future.  Replies leave in request order whatever order the Futures finish in; a Future
that fails closes only its connection; max_pending_replies bounds what a connection that floods
slow requests makes the server hold; server.executor; half-close; TLS; wrong arguments."""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import pytest
from support import TIMEOUT, Recorder, closed_by_peer, connect, recv_exactly, recv_to_eof, serve, wait_until

from reactor import Connection, DefaultProtocol, Server
from reactor.codec import LengthFieldProtocol, LineProtocol


# -- framings: (protocol factory, how a message goes on the wire) -----------------------------
def _line(m: bytes) -> bytes:
    return m + b"\n"


def _length(m: bytes) -> bytes:
    return struct.pack(">I", len(m)) + m


FRAMINGS: dict[str, tuple[Callable[[], Any], Callable[[bytes], bytes]]] = {
    "line": (lambda: LineProtocol(max_length=1024), _line),
    "length": (lambda: LengthFieldProtocol(max_frame_length=1 << 16), _length),
}


def answer(request: bytes) -> bytes:
    """The reply to a request: upper-cased, tagged, of a length that varies with the request."""
    return b"<" + request.upper() + b">" + b"#" * (len(request) % 7)


def requests_for(conn_no: int, n: int, rng: random.Random) -> list[bytes]:
    return [b"c%02d-r%02d-" % (conn_no, j) + bytes(rng.choices(b"abcdefghij", k=rng.randint(0, 40)))
            for j in range(n)]


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="test-pool") as ex:
        yield ex


@pytest.fixture
def aloop():
    """An asyncio loop running in a thread of the test's own (not pygev's)."""
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, name="test-asyncio", daemon=True)
    t.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    t.join(TIMEOUT)
    loop.close()


def _slow(request: bytes, delay: float) -> bytes:
    time.sleep(delay)
    return answer(request)


def pipelined_clients(address: Any, frame: Callable[[bytes], bytes], conns: int = 50, depth: int = 16,
                      seed: int = 0) -> None:
    """`conns` clients each pipeline `depth` requests at once; every reply must be the answer
    to its request, in request order (the whole byte stream is compared)."""
    rng = random.Random(seed)
    socks = [connect(address) for _ in range(conns)]
    try:
        expected = []
        for i, sock in enumerate(socks):
            reqs = requests_for(i, depth, rng)
            sock.sendall(b"".join(frame(r) for r in reqs))
            expected.append(b"".join(frame(answer(r)) for r in reqs))
        for i, sock in enumerate(socks):
            got = recv_exactly(sock, len(expected[i]))
            assert got == expected[i], f"client {i}: replies out of order or wrong"
    finally:
        for sock in socks:
            sock.close()


# -- order ------------------------------------------------------------------------------------
class PoolDelayed(Recorder):
    """Each request answered from a thread pool after a random delay."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        super().__init__()
        self.pool = pool
        self.rng = random.Random(1)
        self.calls = 0

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        self.calls += 1
        return self.pool.submit(_slow, bytes(data), self.rng.random() * 0.003)


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_thread_pool_futures_replies_in_request_order(framing: str, pool: ThreadPoolExecutor) -> None:
    make, frame = FRAMINGS[framing]
    handler = PoolDelayed(pool)
    with serve(handler, protocol=make()) as srv:
        pipelined_clients(srv.address, frame, seed=len(framing))
    assert handler.calls == 50 * 16


class Reversed(Recorder):
    """Holds every Future of a connection until all `depth` requests arrived, then finishes them
    last first: the latest request always finishes first, without any timing."""

    def __init__(self, depth: int, aloop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__()
        self.depth = depth
        self.aloop = aloop
        self.held: dict[int, list[tuple[Any, bytes]]] = {}
        self.finish_order: list[bytes] = []

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        fut: Any = Future() if self.aloop is None else self.aloop.create_future()
        held = self.held.setdefault(id(conn), [])
        held.append((fut, bytes(data)))
        if len(held) == self.depth:
            rev = list(reversed(held))
            if self.aloop is None:
                threading.Thread(target=self._finish, args=(rev,)).start()
            else:
                self.aloop.call_soon_threadsafe(self._finish, rev)
        return fut

    def _finish(self, futs: list[tuple[Any, bytes]]) -> None:
        for fut, request in futs:
            self.finish_order.append(request)
            fut.set_result(answer(request))


@pytest.mark.parametrize("kind", ["concurrent", "asyncio"])
def test_latest_request_finishing_first_still_replies_in_order(kind: str, aloop: Any) -> None:
    handler = Reversed(8, aloop if kind == "asyncio" else None)
    with serve(handler, protocol=LineProtocol()) as srv:
        pipelined_clients(srv.address, _line, conns=10, depth=8, seed=3)
    # the Futures really did finish in the reverse order of the requests
    firsts = [r for r in handler.finish_order if r.startswith(b"c00-")]
    assert [r[:7] for r in firsts] == [b"c00-r%02d" % j for j in reversed(range(8))]


class AsyncioDelayed(Recorder):
    """asyncio Futures (made for a loop running in another thread) finished after random delays."""

    def __init__(self, aloop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.aloop = aloop
        self.rng = random.Random(2)

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        fut = self.aloop.create_future()
        delay = self.rng.random() * 0.003
        self.aloop.call_soon_threadsafe(self.aloop.call_later, delay, fut.set_result, answer(bytes(data)))
        return fut


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_asyncio_futures_replies_in_request_order(framing: str, aloop: Any) -> None:
    make, frame = FRAMINGS[framing]
    with serve(AsyncioDelayed(aloop), protocol=make()) as srv:
        pipelined_clients(srv.address, frame, seed=10 + len(framing))


class Mixed(Recorder):
    """The request's first byte says how it is answered: e echo (the very message object),
    b bytes at once, f a Future, s conn.send() then a Future, n nothing at all, r send_raw()
    of a marker then bytes at once."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        super().__init__()
        self.pool = pool
        self.rng = random.Random(5)

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        kind = data[0:1]
        if kind == b"e":
            return data
        if kind == b"b":
            return answer(bytes(data))
        if kind == b"n":
            return None
        if kind == b"r":
            conn.send_raw(b"[raw]")
            return answer(bytes(data))
        if kind == b"s":
            conn.send(b"sent:" + bytes(data))
        return self.pool.submit(_slow, bytes(data), self.rng.random() * 0.002)


def expected_mixed(requests: list[bytes], frame: Callable[[bytes], bytes]) -> bytes:
    out = []
    for r in requests:
        k = r[:1]
        if k == b"e":
            out.append(frame(r))
        elif k == b"r":
            out.append(b"[raw]" + frame(answer(r)))
        elif k == b"s":
            out.append(frame(b"sent:" + r) + frame(answer(r)))
        elif k != b"n":
            out.append(frame(answer(r)))
    return b"".join(out)


@pytest.mark.parametrize("framing", ["line", "length", "delimiter-echo", "views"])
def test_immediate_replies_sends_and_echoes_wait_behind_pending_futures(framing: str,
                                                                        pool: ThreadPoolExecutor) -> None:
    """Echoes, bytes, send(), send_raw() and None mixed with Futures on one connection: all in
    request order.  With view_threshold=0 every message is a memoryview over the read buffer:
    one echoed while a Future is pending must still be its own bytes later."""
    from reactor.codec import DelimiterProtocol
    options: dict[str, Any] = {}
    if framing == "delimiter-echo":      # plain '\n' delimiter: echoes are arena ranges (O_ARENA)
        proto: Any = DelimiterProtocol(b"\n", max_length=1024)
        frame = _line
    elif framing == "views":
        proto, frame = FRAMINGS["length"][0](), _length
        options["view_threshold"] = 0
    else:
        make, frame = FRAMINGS[framing]
        proto = make()
    rng = random.Random(framing)
    with serve(Mixed(pool), protocol=proto, **options) as srv:
        socks = [connect(srv.address) for _ in range(8)]
        expected = []
        for i, sock in enumerate(socks):
            reqs = [rng.choice(b"ebfsnr") .to_bytes(1, "big") + b"%02d-%03d-" % (i, j)
                    + rng.randbytes(rng.randint(0, 30)).replace(b"\n", b"_").replace(b"\r", b"_")
                    for j in range(120)]
            sock.sendall(b"".join(frame(r) for r in reqs))
            expected.append(expected_mixed(reqs, frame))
        for i, sock in enumerate(socks):
            assert recv_exactly(sock, len(expected[i])) == expected[i], f"client {i}"
            sock.close()


def _slow_upper(data: bytes, delay: float) -> bytes:
    time.sleep(delay)
    return data.upper()


class RawDelayed(Recorder):
    def __init__(self, pool: ThreadPoolExecutor) -> None:
        super().__init__()
        self.pool = pool
        self.rng = random.Random(9)
        self.reads = 0

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        self.reads += 1
        return self.pool.submit(_slow_upper, bytes(data), self.rng.random() * 0.002)


def test_raw_protocol_deferred_replies_keep_the_stream_in_order(pool: ThreadPoolExecutor) -> None:
    """DefaultProtocol: each read is a message; with each reply deferred (random delays) the
    bytes that come back are the stream upper-cased, in order, however it was cut into reads."""
    rng = random.Random(11)
    handler = RawDelayed(pool)
    with serve(handler, protocol=DefaultProtocol()) as srv:
        with connect(srv.address) as sock:
            stream = bytearray()
            for _ in range(200):
                chunk = bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 300)))
                stream += chunk
                sock.sendall(chunk)
            assert recv_exactly(sock, len(stream)) == bytes(stream).upper()
    assert handler.reads >= 1


class PoolFromServer(Recorder):
    """Uses server.executor, as the SPEC says: `return server.executor.submit(fn, bytes(data))`."""

    server: Server

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return self.server.executor.submit(_slow, bytes(data), 0.0005 * (data[-1] % 4))


def executor_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("reactor-executor")}


def test_server_executor_serves_replies_and_is_shut_down_at_stop() -> None:
    before = executor_threads()
    handler = PoolFromServer()
    srv = serve(handler, protocol=LineProtocol())
    handler.server = srv
    with srv:
        pipelined_clients(srv.address, _line, conns=20, depth=16, seed=4)
        assert executor_threads() - before     # it was made, on first use
        ex = srv.executor
        assert srv.executor is ex              # one pool for the server
    assert not executor_threads() - before, "executor threads outlive stop()"
    with pytest.raises(RuntimeError):
        ex.submit(int)                         # shut down
    with pytest.raises(RuntimeError):          # and not made again after stop
        srv.executor  # noqa: B018


def test_tls_deferred_reply(pool: ThreadPoolExecutor) -> None:
    from test_tls import client, server_context
    with serve(Mixed(pool), protocol=LineProtocol(), ssl=server_context()) as srv:
        with client(srv.address) as sock:
            reqs = [b"f-1-slow", b"b-2-now", b"s-3-send", b"e-4-echo", b"f-5-slow", b"r-6-raw"]
            expected = expected_mixed(reqs, _line)
            sock.sendall(b"".join(_line(r) for r in reqs))
            assert recv_exactly(sock, len(expected)) == expected
            # and a deferred reply on its own, after that
            sock.sendall(b"f-7-again\n")
            assert recv_exactly(sock, len(answer(b"f-7-again")) + 1) == _line(answer(b"f-7-again"))


# -- errors -----------------------------------------------------------------------------------
class Boom(Exception):
    pass


class Failing(Recorder):
    """`fail` raises in the pool, `int` resolves to a non-bytes, anything else is answered."""

    def __init__(self, pool: ThreadPoolExecutor, aloop: Any = None) -> None:
        super().__init__()
        self.pool = pool
        self.aloop = aloop
        self.error = Boom("the query failed")

    def _work(self, request: bytes) -> Any:
        if request.startswith(b"fail"):
            raise self.error
        if request.startswith(b"int"):
            return 12345
        return answer(request)

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        request = bytes(data)
        if self.aloop is None:
            return self.pool.submit(self._work, request)
        fut = self.aloop.create_future()

        def settle() -> None:
            try:
                fut.set_result(self._work(request))
            except Boom as exc:
                fut.set_exception(exc)
        self.aloop.call_soon_threadsafe(settle)
        return fut


@pytest.mark.parametrize("kind", ["concurrent", "asyncio"])
def test_future_raising_closes_only_its_connection(kind: str, pool: ThreadPoolExecutor, aloop: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="reactor")
    handler = Failing(pool, aloop if kind == "asyncio" else None)
    with serve(handler, protocol=LineProtocol()) as srv:
        with connect(srv.address) as good, connect(srv.address) as bad:
            conns = handler.wait_connected(2)
            bad.sendall(b"ok-1\nfail-2\nok-3\n")
            # the reply ahead of the failure goes out, then the close; nothing for ok-3
            assert recv_to_eof(bad) == _line(answer(b"ok-1"))
            bad_conn = next(c for c in conns if handler.close_count(c))
            assert handler.wait_closed(bad_conn) is handler.error
            good.sendall(b"ok-a\nok-b\n")
            expected = _line(answer(b"ok-a")) + _line(answer(b"ok-b"))
            assert recv_exactly(good, len(expected)) == expected
            assert sum(handler.close_count(c) for c in conns) == 1
    assert any(r.exc_info and r.exc_info[1] is handler.error for r in caplog.records), caplog.text


def test_future_resolving_to_non_bytes_closes_with_type_error(pool: ThreadPoolExecutor,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="reactor")
    handler = Failing(pool)
    with serve(handler, protocol=LineProtocol()) as srv:
        with connect(srv.address) as sock:
            sock.sendall(b"ok-1\nint-2\nok-3\n")
            assert recv_to_eof(sock) == _line(answer(b"ok-1"))     # nothing for int-2 or after
            (conn,) = handler.wait_connected(1)
            error = handler.wait_closed(conn)
            assert isinstance(error, TypeError), error
            assert "int" in str(error)
        with connect(srv.address) as sock:                          # the server still serves
            sock.sendall(b"ok-4\n")
            assert recv_exactly(sock, len(answer(b"ok-4")) + 1) == _line(answer(b"ok-4"))


def test_future_cancelled_by_someone_else_closes_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="reactor")
    futs: list[Future] = []

    class H(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            fut: Future = Future()
            futs.append(fut)
            return fut

    handler = H()
    with serve(handler, protocol=LineProtocol()) as srv, connect(srv.address) as sock:
        sock.sendall(b"x\n")
        wait_until(lambda: futs, what="the handler call")
        futs[0].cancel()
        assert closed_by_peer(sock)
        (conn,) = handler.wait_connected(1)
        assert handler.wait_closed(conn) is not None


# -- max_pending_replies ----------------------------------------------------------------------
class Held(Recorder):
    """Every reply a Future that the test finishes (release()); once released, new requests
    get Futures that are already done.  b"ping" requests are answered at once."""

    def __init__(self, running: bool = False) -> None:
        super().__init__()
        self.running = running
        self.futs: list[tuple[Future, bytes]] = []
        self.released = False
        self.calls = 0
        self.lock = threading.Lock()

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        if data[:4] == b"ping":
            return b"R" + bytes(data)
        fut: Future = Future()
        if self.running:
            fut.set_running_or_notify_cancel()      # like a pool job under way: cannot be cancelled
        with self.lock:
            self.calls += 1
            if not self.released:
                self.futs.append((fut, bytes(data)))
                return fut
        fut.set_result(b"R" + bytes(data))
        return fut

    def release(self) -> None:
        with self.lock:
            self.released = True
            futs, self.futs = self.futs, []
        for fut, data in futs:
            fut.set_result(b"R" + data)


def turns(address: Any, frame: Callable[[bytes], bytes], n: int = 5) -> None:
    """A few round trips on another connection: the server's loop has turned several times."""
    with connect(address) as sock:
        for i in range(n):
            sock.sendall(frame(b"ping%d" % i))
            want = frame(b"Rping%d" % i)
            assert recv_exactly(sock, len(want)) == want


@pytest.mark.parametrize("framing", ["line", "length"])
def test_max_pending_replies_bounds_a_flood_of_slow_requests(framing: str) -> None:
    make, frame = FRAMINGS[framing]
    cap = 8
    n = 20_000
    read_size = 16384
    handler = Held()
    with serve(handler, protocol=make(), max_pending_replies=cap, read_buffer_size=read_size) as srv:
        flood = connect(srv.address)
        payload = b"".join(frame(b"%05d" % i) for i in range(n))
        sender = threading.Thread(target=flood.sendall, args=(payload,), daemon=True)
        sender.start()
        wait_until(lambda: handler.calls >= cap, what="the first requests")
        (conn,) = handler.wait_connected(1)
        turns(srv.address, frame)       # the loop turned several times since the gate shut
        assert handler.calls == cap, f"{handler.calls} requests handed over past max_pending_replies={cap}"
        assert [d for _f, d in handler.futs] == [b"%05d" % i for i in range(cap)]
        assert conn.pending_read <= read_size
        assert conn.connected
        handler.release()
        want = b"".join(frame(b"R%05d" % i) for i in range(n))
        got = recv_exactly(flood, len(want))
        assert got == want
        sender.join(TIMEOUT)
        assert not sender.is_alive()
        flood.close()
    assert handler.calls == n


@pytest.mark.parametrize("path", ["python-unpacket", "tls"])
def test_gate_of_one_on_the_generic_reader_keeps_order(path: str, pool: ThreadPoolExecutor) -> None:
    """max_pending_replies=1: every request waits for the previous reply (the gate opens and
    shuts per message), through protocols with their own unpacket and through TLS."""
    from codec_reference import PyLine
    options: dict[str, Any] = {"max_pending_replies": 1}
    if path == "tls":
        from test_tls import client, server_context
        options.update(protocol=LineProtocol(), ssl=server_context())
    else:
        options.update(protocol=PyLine(max_length=1024))
    with serve(PoolDelayed(pool), **options) as srv:
        rng = random.Random(path)
        reqs = requests_for(0, 300, rng)
        expected = b"".join(_line(answer(r)) for r in reqs)
        if path == "tls":
            with client(srv.address) as sock:
                sock.sendall(b"".join(_line(r) for r in reqs))
                assert recv_exactly(sock, len(expected)) == expected
        else:
            pipelined_clients(srv.address, _line, conns=5, depth=100, seed=8)


@pytest.mark.parametrize("cap", [64, 3])
def test_half_close_after_deferred_requests_gets_every_reply_then_eof(cap: int,
                                                                     pool: ThreadPoolExecutor) -> None:
    """The peer sends its requests and shuts its side: the pending replies still arrive (also
    those of requests still waiting behind the gate), then the server closes."""
    handler = PoolDelayed(pool)
    with serve(handler, protocol=LineProtocol(), max_pending_replies=cap) as srv:
        with connect(srv.address) as sock:
            reqs = requests_for(1, 40, random.Random(cap))
            sock.sendall(b"".join(_line(r) for r in reqs))
            sock.shutdown(socket.SHUT_WR)
            assert recv_to_eof(sock) == b"".join(_line(answer(r)) for r in reqs)
        (conn,) = handler.wait_connected(1)
        assert handler.wait_closed(conn) is None
    assert handler.calls == 40


def test_reset_by_peer_cancels_pending_futures_even_while_gated(caplog: pytest.LogCaptureFixture) -> None:
    """A peer that resets with replies pending (and more requests waiting behind the gate):
    its Futures are cancelled and on_close runs, before the server stops."""
    caplog.set_level(logging.WARNING, logger="reactor")
    handler = Held()
    with serve(handler, protocol=LineProtocol(), max_pending_replies=2) as srv:
        sock = connect(srv.address)
        sock.sendall(b"a\nb\nc\nd\n")
        wait_until(lambda: handler.calls == 2, what="two requests handed over")
        conn = handler.wait_connected(1)[0]
        turns(srv.address, _line)
        futs = [f for f, _d in handler.futs]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()                                   # RST
        handler.wait_closed(conn)
        assert all(f.cancelled() for f in futs)
        assert handler.calls == 2                      # c and d were never handed over
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_future_finishing_after_its_connection_closed_sends_nothing_and_logs_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    """A Future the user finishes after the connection went away: nothing is sent anywhere
    (another connection that got the same fd number sees only its own replies)."""
    caplog.set_level(logging.WARNING, logger="reactor")
    handler = Held(running=True)
    with serve(handler, protocol=LineProtocol()) as srv:
        first = connect(srv.address)
        first.sendall(b"one\n")
        wait_until(lambda: handler.calls == 1, what="the request")
        (conn,) = handler.wait_connected(1)
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        first.close()
        handler.wait_closed(conn)
        with connect(srv.address) as second:
            handler.wait_connected(2)
            (fut, _data), = handler.futs
            fut.set_result(b"LATE-REPLY")             # too late: dropped (the job could not be cancelled)
            turns(srv.address, _line)
            second.sendall(b"ping-second\n")
            assert recv_exactly(second, 13) == b"Rping-second\n"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# -- arguments --------------------------------------------------------------------------------
@pytest.mark.parametrize("value, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                          (True, TypeError), ("8", TypeError), (None, TypeError)])
def test_max_pending_replies_is_checked(value: Any, error: type) -> None:
    with pytest.raises(error, match="max_pending_replies"):
        Server(Recorder(), address="127.0.0.1:0", max_pending_replies=value)


def test_max_pending_replies_of_one_is_accepted() -> None:
    srv = Server(Recorder(), address="127.0.0.1:0", max_pending_replies=1)
    assert srv.options.max_pending_replies == 1


class Quits(Recorder):
    """A pipelined slow GET then QUIT: QUIT closes the connection and says goodbye (the
    Redis / SMTP pattern).  conn.close() promises that queued output - and the reply of the
    call that closes - still goes out."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        super().__init__()
        self.pool = pool

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        if data == b"QUIT":
            conn.close()
            return b"bye"
        return self.pool.submit(_slow, bytes(data), 0.002)


def test_close_after_pending_deferred_replies_still_sends_them(pool: ThreadPoolExecutor) -> None:
    handler = Quits(pool)
    with serve(handler, protocol=LineProtocol()) as srv, connect(srv.address) as sock:
        sock.sendall(b"get-1\nget-2\nQUIT\n")
        want = _line(answer(b"get-1")) + _line(answer(b"get-2")) + b"bye\n"
        assert recv_to_eof(sock) == want


def test_future_resolving_to_a_future_and_done_futures(pool: ThreadPoolExecutor) -> None:
    """A Future whose result is another Future waits for that one; a Future already done when
    returned is sent in its place like any other."""

    class H(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            request = bytes(data)
            if request.startswith(b"nested"):
                return pool.submit(lambda: pool.submit(_slow, request, 0.002))
            done: Future = Future()
            done.set_result(answer(request))
            return done

    with serve(H(), protocol=LineProtocol()) as srv, connect(srv.address) as sock:
        reqs = [b"nested-1", b"done-2", b"nested-3", b"done-4"]
        sock.sendall(b"".join(_line(r) for r in reqs))
        want = b"".join(_line(answer(r)) for r in reqs)
        assert recv_exactly(sock, len(want)) == want


def test_deferred_replies_on_several_loops(pool: ThreadPoolExecutor) -> None:
    handler = PoolDelayed(pool)
    with serve(handler, protocol=LineProtocol(), num_loops=2) as srv:
        pipelined_clients(srv.address, _line, conns=20, depth=16, seed=21)
    assert handler.calls == 20 * 16


class BigReplies(Recorder):
    """Replies of 64-512 KiB from the pool (past write_high_water), and large requests echoed
    (memoryviews) while Futures are pending."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        super().__init__()
        self.pool = pool

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        if data[:1] == b"e":
            return data
        return self.pool.submit(big_reply, bytes(data[:16]))


def big_reply(head: bytes) -> bytes:
    rng = random.Random(head)
    return head + rng.randbytes(rng.randint(64 << 10, 512 << 10))


def test_large_deferred_replies_and_echoed_views_under_backpressure(pool: ThreadPoolExecutor) -> None:
    rng = random.Random(99)
    reqs = []
    for j in range(24):
        kind = b"e" if j % 3 == 1 else b"f"
        reqs.append(kind + b"%015d" % j + rng.randbytes(rng.randint(0, 40_000) if kind == b"e" else 0))
    want = b"".join(_length(r if r[:1] == b"e" else big_reply(r[:16])) for r in reqs)
    with serve(BigReplies(pool), protocol=LengthFieldProtocol(), write_high_water=256 << 10) as srv:
        with connect(srv.address) as sock:
            sender = threading.Thread(target=sock.sendall, args=(b"".join(_length(r) for r in reqs),))
            sender.start()
            got = recv_exactly(sock, len(want))
            sender.join(TIMEOUT)
            assert got == want
