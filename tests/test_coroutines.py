"""Coroutine handlers (SPEC "Replies that take time"): `async def on_message / on_connect /
on_close` run on an asyncio loop - pygev's own thread ('reactor-asyncio') under `with Server`,
the running loop under `async with Server(...)` (asyncio and uvloop) - with replies in request
order, errors isolated to their connection, cancellation at stop() and at a peer's reset, no
"never awaited" warning and no thread left behind."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import socket
import struct
import threading
import warnings
from typing import Any, Iterator

import pytest
import uvloop                 # a test dependency (pyproject's test extra): pygev's own loop uses it
from support import TIMEOUT, Recorder, closed_by_peer, connect, recv_exactly, recv_to_eof, serve, wait_until

from reactor import Connection, Handler, Server
from reactor.codec import LengthFieldProtocol, LineProtocol


def answer(request: bytes) -> bytes:
    return b"<" + request.upper() + b">" + b"#" * (len(request) % 7)


def _line(m: bytes) -> bytes:
    return m + b"\n"


def _length(m: bytes) -> bytes:
    return struct.pack(">I", len(m)) + m


FRAMINGS = {
    "line": (lambda: LineProtocol(max_length=1024), _line),
    "length": (lambda: LengthFieldProtocol(max_frame_length=1 << 16), _length),
}


def reactor_threads() -> set[threading.Thread]:
    """Threads pygev made for a server (loops, its asyncio loop, its executor)."""
    return {t for t in threading.enumerate()
            if t.name.startswith(("reactor-asyncio", "reactor-executor", "reactor-loop", "reactor-server"))}


def thread_names() -> set[str]:
    return {t.name for t in reactor_threads()}


@contextlib.contextmanager
def warnings_seen() -> Iterator[list[str]]:
    """The RuntimeWarnings ('coroutine ... was never awaited') and unraisable exceptions seen
    inside the block, garbage collected at its end."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield found
        gc.collect()
    found.extend(str(w.message) for w in seen
                 if issubclass(w.category, RuntimeWarning) or "never awaited" in str(w.message)
                 or "Unraisable" in w.category.__name__)


@pytest.fixture
def clean():
    """No 'coroutine ... was never awaited' (or any RuntimeWarning / unraisable exception)
    while the test runs or when its garbage is collected, and no pygev thread left after it."""
    before = reactor_threads()
    with warnings_seen() as bad:
        yield
    assert not bad, bad
    left = reactor_threads() - before
    assert not left, f"threads left after stop: {sorted(t.name for t in left)}"


def pipelined_clients(address: Any, frame: Any, conns: int, depth: int, seed: int) -> None:
    rng = random.Random(seed)
    socks = [connect(address) for _ in range(conns)]
    try:
        expected = []
        for i, sock in enumerate(socks):
            reqs = [b"c%02d-r%02d-" % (i, j) + bytes(rng.choices(b"abcdefgh", k=rng.randint(0, 30)))
                    for j in range(depth)]
            sock.sendall(b"".join(frame(r) for r in reqs))
            expected.append(b"".join(frame(answer(r)) for r in reqs))
        for i, sock in enumerate(socks):
            assert recv_exactly(sock, len(expected[i])) == expected[i], f"client {i}"
    finally:
        for sock in socks:
            sock.close()


def stop_while_clients_read(srv: Server, socks: list[socket.socket]) -> list[bytes]:
    """stop() in a thread while the clients read to EOF and close (so the server's lingering
    close sees their FIN at once); returns what each client got before the EOF."""
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    got = []
    for sock in socks:
        try:
            got.append(recv_to_eof(sock))
        except ConnectionResetError:
            got.append(b"<reset>")
        sock.close()
    stopper.join(TIMEOUT)
    assert not stopper.is_alive(), "stop() did not return"
    return got


# -- order, on pygev's own asyncio loop -------------------------------------------------------
class Sleepy(Recorder):
    """`await asyncio.sleep(random)` then the answer; records where it ran and what it got."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random(3)
        self.loops: set[Any] = set()
        self.threads: set[str] = set()
        self.types: set[type] = set()
        self.calls = 0

    async def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        self.calls += 1
        self.loops.add(asyncio.get_running_loop())
        self.threads.add(threading.current_thread().name)
        self.types.add(type(data))
        await asyncio.sleep(self.rng.random() * 0.003)
        return answer(data)


@pytest.mark.parametrize("framing, loops", [("length", 1), ("line", 1), ("line", 2)])
def test_async_on_message_replies_in_request_order(framing: str, loops: int, clean: None) -> None:
    make, frame = FRAMINGS[framing]
    handler = Sleepy()
    with serve(handler, protocol=make(), num_loops=loops) as srv:
        pipelined_clients(srv.address, frame, conns=50, depth=16, seed=len(framing))
        assert "reactor-asyncio" in thread_names()
    assert handler.calls == 50 * 16
    assert handler.threads == {"reactor-asyncio"}         # pygev's own asyncio loop thread
    assert len(handler.loops) == 1
    assert all(isinstance(lp, uvloop.Loop) for lp in handler.loops)
    assert handler.types == {bytes}


def test_async_handler_gets_bytes_even_above_the_view_threshold(clean: None) -> None:
    handler = Sleepy()
    big = b"q" * 20000
    with serve(handler, protocol=LengthFieldProtocol(), view_threshold=0) as srv:
        with connect(srv.address) as sock:
            sock.sendall(_length(b"small") + _length(big) + _length(b"tail"))
            want = _length(answer(b"small")) + _length(answer(big)) + _length(answer(b"tail"))
            assert recv_exactly(sock, len(want)) == want
    assert handler.types == {bytes}                       # never a memoryview


class MixedAsync(Recorder):
    """async on_message that sometimes sends before it awaits: the sent bytes go out right
    after the previous replies, the return value after them."""

    async def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        if data[:1] == b"s":
            conn.send(b"sent:" + data)
        if data[:1] == b"n":
            return None
        await asyncio.sleep(0)
        return answer(data)


def test_async_send_and_none_keep_their_place(clean: None) -> None:
    reqs = [b"s1", b"a2", b"n3", b"s4", b"n5", b"a6"]
    with serve(MixedAsync(), protocol=LineProtocol()) as srv, connect(srv.address) as sock:
        sock.sendall(b"".join(_line(r) for r in reqs))
        want = b"".join((_line(b"sent:" + r) if r[:1] == b"s" else b"")
                        + (b"" if r[:1] == b"n" else _line(answer(r))) for r in reqs)
        got = recv_exactly(sock, len(want))
        # a send() made inside the coroutine is queued when the coroutine runs: after every
        # reply of the requests before it
        assert got == want


# -- errors -----------------------------------------------------------------------------------
class Boom(Exception):
    pass


class AsyncFailing(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.error = Boom("async handler failed")

    async def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        await asyncio.sleep(0)
        if data.startswith(b"fail"):
            raise self.error
        return answer(data)


def test_async_on_message_raising_closes_only_its_connection(clean: None,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="reactor")
    handler = AsyncFailing()
    with serve(handler, protocol=LineProtocol()) as srv:
        with connect(srv.address) as good, connect(srv.address) as bad:
            conns = handler.wait_connected(2)
            bad.sendall(b"ok-1\nfail-2\nok-3\n")
            assert recv_to_eof(bad) == _line(answer(b"ok-1"))
            good.sendall(b"ok-a\n")
            want = _line(answer(b"ok-a"))
            assert recv_exactly(good, len(want)) == want
            closed = [c for c in conns if handler.close_count(c)]
            assert len(closed) == 1
            assert handler.wait_closed(closed[0]) is handler.error
    assert any(r.exc_info and r.exc_info[1] is handler.error for r in caplog.records), caplog.text


class ReturnsCoroutine(Recorder):
    """A sync on_message that calls a coroutine function and returns the coroutine object."""

    async def work(self, data: bytes) -> bytes:
        return data

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return self.work(bytes(data))


def test_sync_on_message_returning_a_coroutine_is_a_clear_type_error(clean: None,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="reactor")
    handler = ReturnsCoroutine()
    with serve(handler, protocol=LineProtocol()) as srv:
        with connect(srv.address) as sock:
            sock.sendall(b"x\n")
            assert closed_by_peer(sock)
            (conn,) = handler.wait_connected(1)
            error = handler.wait_closed(conn)
            assert isinstance(error, TypeError)
            assert "async def" in str(error)
    del error


class FutureThenCoroutine(Recorder):
    """First a pending Future (so the next reply is held), then a coroutine object."""

    def __init__(self) -> None:
        super().__init__()
        from concurrent.futures import Future
        self.fut: Future = Future()
        self.calls = 0

    async def work(self) -> bytes:
        return b"never"

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        self.calls += 1
        return self.fut if self.calls == 1 else self.work()


@pytest.mark.parametrize("end", ["future-done", "reset"])
def test_coroutine_object_held_behind_a_future_is_closed_too(end: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The coroutine object waits in the chain behind the Future; whether the Future then
    finishes (TypeError at its turn) or the peer resets first, it is closed: no warning."""
    caplog.set_level(logging.CRITICAL, logger="reactor")
    handler = FutureThenCoroutine()
    with warnings_seen() as bad, serve(handler, protocol=LineProtocol()) as srv:
        sock = connect(srv.address)
        sock.sendall(b"a\nb\n")
        wait_until(lambda: handler.calls == 2, what="both requests")
        (conn,) = handler.wait_connected(1)
        if end == "future-done":
            handler.fut.set_result(b"first")
            assert recv_to_eof(sock) == b"first\n"
            error = handler.wait_closed(conn)
            assert isinstance(error, TypeError) and "async def" in str(error), error
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            handler.wait_closed(conn)
        sock.close()
        del conn
    assert not bad, bad


# -- cancellation -----------------------------------------------------------------------------
class Forever(Recorder):
    """Coroutines that wait for ever (until cancelled, which they record)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[bytes] = []
        self.cancelled: list[bytes] = []
        self.finished: list[bytes] = []
        self.lock = threading.Lock()

    async def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        with self.lock:
            self.started.append(data)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            with self.lock:
                self.cancelled.append(data)
            raise
        self.finished.append(data)
        return b"never sent"


def test_stop_cancels_pending_coroutines_and_waits_for_them(clean: None,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="reactor")
    handler = Forever()
    srv = serve(handler, protocol=LineProtocol())
    with srv:
        socks = [connect(srv.address) for _ in range(3)]
        for i, sock in enumerate(socks):
            sock.sendall(b"%d-a\n%d-b\n" % (i, i))
        wait_until(lambda: len(handler.started) == 6, what="six coroutines running")
        got = stop_while_clients_read(srv, socks)
        # stop() returned: every coroutine was cancelled inside, and nothing was sent
        assert sorted(handler.cancelled) == sorted(handler.started)
        assert not handler.finished
        assert got == [b""] * 3
        assert srv.stats()["sent_bytes"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_reset_by_peer_cancels_its_coroutines(clean: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="reactor")
    handler = Forever()
    with serve(handler, protocol=LineProtocol(), max_pending_replies=2) as srv:
        sock = connect(srv.address)
        other = connect(srv.address)
        sock.sendall(b"a\nb\nc\n")              # c waits behind the gate: never started
        wait_until(lambda: len(handler.started) == 2, what="two coroutines running")
        conn = handler.wait_connected(1)[0]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        handler.wait_closed(conn)
        wait_until(lambda: len(handler.cancelled) == 2, what="the coroutines to be cancelled")
        assert sorted(handler.cancelled) == [b"a", b"b"]
        assert handler.started == [b"a", b"b"]
        other.sendall(b"x\n")                   # the other connection still works (is served)
        wait_until(lambda: len(handler.started) == 3, what="the other connection's request")
        assert srv.stats()["sent_bytes"] == 0
        got = stop_while_clients_read(srv, [other])
        assert got == [b""]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


class HalfClose(Recorder):
    async def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        await asyncio.sleep(0.001 * (data[-1] % 3))
        return answer(data)


@pytest.mark.parametrize("cap", [64, 2])
def test_half_close_gets_every_async_reply_then_eof(cap: int, clean: None) -> None:
    handler = HalfClose()
    with serve(handler, protocol=LineProtocol(), max_pending_replies=cap) as srv:
        with connect(srv.address) as sock:
            reqs = [b"req-%02d" % i for i in range(30)]
            sock.sendall(b"".join(_line(r) for r in reqs))
            sock.shutdown(socket.SHUT_WR)
            assert recv_to_eof(sock) == b"".join(_line(answer(r)) for r in reqs)
        (conn,) = handler.wait_connected(1)
        assert handler.wait_closed(conn) is None


class Gated(Recorder):
    """async on_message waiting for the test's release (an Event on the handler's loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.release_event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        self.calls += 1
        if data[:4] == b"ping":
            return data
        if self.release_event is None:
            self.loop = asyncio.get_running_loop()
            self.release_event = asyncio.Event()
        await self.release_event.wait()
        return b"R" + data

    def release(self) -> None:
        assert self.loop is not None and self.release_event is not None
        self.loop.call_soon_threadsafe(self.release_event.set)


def test_max_pending_replies_bounds_a_flood_of_slow_coroutines(clean: None) -> None:
    cap = 16
    n = 20_000
    handler = Gated()
    with serve(handler, protocol=LineProtocol(), max_pending_replies=cap, read_buffer_size=16384) as srv:
        flood = connect(srv.address)
        sender = threading.Thread(target=flood.sendall,
                                  args=(b"".join(b"%05d\n" % i for i in range(n)),), daemon=True)
        sender.start()
        wait_until(lambda: handler.calls >= cap, what="the first requests")
        conn = handler.wait_connected(1)[0]
        with connect(srv.address) as other:     # a few round trips: the loop turned meanwhile
            for i in range(5):
                other.sendall(b"ping%d\n" % i)
                assert recv_exactly(other, 6) == b"ping%d\n" % i
        assert handler.calls == cap + 5
        assert conn.pending_read <= 16384
        handler.release()
        want = b"".join(b"R%05d\n" % i for i in range(n))
        assert recv_exactly(flood, len(want)) == want
        sender.join(TIMEOUT)
        flood.close()
    assert handler.calls == n + 5


# -- async on_connect / on_close ----------------------------------------------------------------
def turns(srv: Server, n: int) -> None:
    """A few connects on the server's loop: it has turned several times when this returns."""
    for _ in range(n):
        before = srv.stats()["accepted"]
        connect(srv.address).close()
        wait_until(lambda b=before: srv.stats()["accepted"] > b, what="an accept")


class SlowConnect(Handler):
    """on_connect awaits the test's go, then sets conn.context; on_message uses it."""

    def __init__(self, async_message: bool) -> None:
        self.go = threading.Event()
        self.connect_done = 0
        self.messages_before_connect_done = 0
        self.closed: list[Any] = []
        self.close_loop: Any = None
        self.async_message = async_message
        self.lock = threading.Lock()
        self.conns: list[Connection] = []

    async def on_connect(self, conn: Connection) -> None:
        self.conns.append(conn)
        while not self.go.is_set():
            await asyncio.sleep(0.002)
        await asyncio.sleep(0)
        conn.context = b"ctx%d" % conn.fd
        self.connect_done += 1

    def _reply(self, conn: Connection, data: Any) -> bytes:
        if self.connect_done == 0:
            self.messages_before_connect_done += 1
        return bytes(conn.context or b"NONE") + b":" + bytes(data)

    async def on_close(self, conn: Connection, error: BaseException | None) -> None:
        await asyncio.sleep(0)
        with self.lock:
            self.close_loop = asyncio.get_running_loop()
            self.closed.append((conn.context, error))


class SlowConnectSync(SlowConnect):
    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return self._reply(conn, data)


class SlowConnectAsync(SlowConnect):
    async def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return self._reply(conn, data)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_async_on_connect_finishes_before_any_message_is_handled(kind: str, clean: None) -> None:
    handler = SlowConnectSync(False) if kind == "sync" else SlowConnectAsync(True)
    with serve(handler, protocol=LineProtocol()) as srv:
        with connect(srv.address) as sock:
            sock.sendall(b"m1\nm2\nm3\n")        # at once, while on_connect still waits
            wait_until(lambda: handler.conns, what="on_connect to start")
            turns(srv, 3)                        # the loop turned meanwhile (not reading them)
            handler.go.set()
            ctx = b"ctx%d" % handler.conns[0].fd
            want = b"".join(ctx + b":" + m + b"\n" for m in (b"m1", b"m2", b"m3"))
            assert recv_exactly(sock, len(want)) == want
            assert handler.messages_before_connect_done == 0
        wait_until(lambda: len(handler.closed) == 4, what="the async on_close calls")
    assert (ctx, None) in handler.closed
    assert isinstance(handler.close_loop, uvloop.Loop)


class ConnectFails(Recorder):
    async def on_connect(self, conn: Connection) -> None:
        super().on_connect(conn)
        await asyncio.sleep(0)
        raise Boom("no database")

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        return b"should not be called"


def test_async_on_connect_raising_closes_the_connection(clean: None,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="reactor")
    handler = ConnectFails()
    with serve(handler, protocol=LineProtocol()) as srv, connect(srv.address) as sock:
        sock.sendall(b"hello\n")
        assert closed_by_peer(sock)
        (conn,) = handler.wait_connected(1)
        assert isinstance(handler.wait_closed(conn), Boom)


def test_async_on_eof_is_refused_when_the_server_is_built() -> None:
    class H(Handler):
        async def on_eof(self, conn: Connection) -> bool:
            return True

    with pytest.raises(TypeError, match="on_eof"):
        Server(H(), address="127.0.0.1:0")


# -- async with Server(...) -------------------------------------------------------------------
class LoopAware(Handler):
    def __init__(self) -> None:
        self.loops: set[Any] = set()
        self.closed: list[Any] = []

    async def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        self.loops.add(asyncio.get_running_loop())
        await asyncio.sleep(0.001 * (data[-1] % 3))
        return answer(data)

    async def on_close(self, conn: Connection, error: BaseException | None) -> None:
        self.closed.append(asyncio.get_running_loop())


async def async_client(address: Any, n: int) -> None:
    reader, writer = await asyncio.open_connection(*address)
    try:
        reqs = [b"a-%03d" % i for i in range(n)]
        writer.write(b"".join(_line(r) for r in reqs))
        want = b"".join(_line(answer(r)) for r in reqs)
        got = await asyncio.wait_for(reader.readexactly(len(want)), TIMEOUT)
        assert got == want
    finally:
        writer.close()
        await writer.wait_closed()


async def serve_inside_asyncio(how_stop: str) -> tuple[LoopAware, Any]:
    handler = LoopAware()
    async with Server(handler, address="127.0.0.1:0", protocol=LineProtocol()) as srv:
        assert "reactor-asyncio" not in thread_names()    # the running loop is borrowed
        await asyncio.gather(*(async_client(srv.address, 16) for _ in range(10)))

        async def stopper() -> None:
            await asyncio.sleep(0)
            if how_stop == "thread":
                await asyncio.to_thread(srv.stop)
            else:
                srv.stop()                 # blocking, from a task on the same loop

        task = asyncio.ensure_future(stopper())
        await asyncio.wait_for(srv.wait_closed(), TIMEOUT)
        await task
        await asyncio.wait_for(srv.wait_closed(), TIMEOUT)   # again: returns at once
    return handler, asyncio.get_running_loop()


@pytest.mark.parametrize("how_stop", ["thread", "blocking"])
def test_async_with_inside_asyncio_run(how_stop: str, clean: None, caplog: pytest.LogCaptureFixture) -> None:
    """Also stop() called (blocking) from a task of the loop that runs the coroutines - as a
    signal handler added with loop.add_signal_handler(SIGTERM, srv.stop) does."""
    caplog.set_level(logging.WARNING)
    handler, loop = asyncio.run(serve_inside_asyncio(how_stop))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert handler.loops == {loop}
    assert set(handler.closed) <= {loop} and len(handler.closed) == 10


def test_async_with_inside_uvloop(clean: None) -> None:
    handler, loop = uvloop.run(serve_inside_asyncio("thread"))
    assert isinstance(loop, uvloop.Loop)
    assert handler.loops == {loop}


async def stop_with_pending_inside_asyncio() -> tuple[Forever, list[bytes]]:
    handler = Forever()
    async with Server(handler, address="127.0.0.1:0", protocol=LineProtocol()) as srv:
        reader, writer = await asyncio.open_connection(*srv.address)
        writer.write(b"p1\np2\n")
        for _ in range(int(TIMEOUT / 0.005)):
            if len(handler.started) == 2:
                break
            await asyncio.sleep(0.005)
        assert len(handler.started) == 2
        stop = asyncio.ensure_future(asyncio.to_thread(srv.stop))
        got = await asyncio.wait_for(reader.read(), TIMEOUT)    # to EOF: nothing was sent
        writer.close()
        await asyncio.wait_for(stop, TIMEOUT)
        await asyncio.wait_for(srv.wait_closed(), TIMEOUT)
    return handler, [got]


def test_stop_inside_asyncio_cancels_pending_coroutines(clean: None) -> None:
    handler, got = asyncio.run(stop_with_pending_inside_asyncio())
    assert got == [b""]
    assert sorted(handler.cancelled) == [b"p1", b"p2"]
    assert not handler.finished


def test_wait_closed_after_a_with_block() -> None:
    srv = serve(Recorder())
    with srv:
        pass

    async def main() -> None:
        await asyncio.wait_for(srv.wait_closed(), TIMEOUT)

    asyncio.run(main())


class StopsTheServer(Recorder):
    """`stop` stops the server from inside an async on_message (SPEC: stop() is callable from
    handlers); the on_close coroutines of the connections must still run."""

    server: Server

    def __init__(self) -> None:
        super().__init__()
        self.async_closes = 0

    async def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        if data == b"stop":
            self.server.stop()
            return b"stopping"
        return answer(data)

    async def on_close(self, conn: Connection, error: BaseException | None) -> None:
        super().on_close(conn, error)
        await asyncio.sleep(0)
        self.async_closes += 1


def test_stop_called_from_an_async_handler(clean: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    handler = StopsTheServer()
    srv = serve(handler, protocol=LineProtocol())
    handler.server = srv
    with srv:
        socks = [connect(srv.address) for _ in range(3)]
        socks[0].sendall(b"hello\n")
        assert recv_exactly(socks[0], 13) == _line(answer(b"hello"))
        socks[1].sendall(b"stop\n")
        got = [recv_to_eof(s) for s in socks]
        for s in socks:
            s.close()
        assert got[1] in (b"", b"stopping\n")
    assert handler.async_closes == 3
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
