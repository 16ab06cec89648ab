"""Server data path over real loopback sockets: byte-exact echo, many clients, several loops
and their load balancing, ordered sends from other threads, addresses."""
from __future__ import annotations

import random
import selectors
import socket
import threading
import time
from collections import Counter
from typing import Any

import pytest
from support import TIMEOUT, EchoRecorder, Recorder, connect, echo_exchange, recv_exactly, serve, wait_until

from reactor import Connection, Protocol


@pytest.mark.parametrize("size", [1, 1000, 65536 + 7, 1 << 20, 8 << 20])
def test_echo_is_byte_exact(size: int) -> None:
    rng = random.Random(size)
    payload = rng.randbytes(size)
    with serve(EchoRecorder()) as srv:
        assert echo_exchange(srv.address, payload, rng) == payload


def test_echo_in_tiny_random_chunks() -> None:
    rng = random.Random(7)
    payload = rng.randbytes(300_000)
    with serve(EchoRecorder()) as srv:
        assert echo_exchange(srv.address, payload, rng, max_chunk=97) == payload


def test_two_hundred_concurrent_clients() -> None:
    n = 200
    rng = random.Random(200)
    payloads = [b"%04d|" % i + rng.randbytes(rng.randint(1, 4000)) for i in range(n)]
    handler = EchoRecorder()
    with serve(handler, num_loops=2) as srv:
        socks = [connect(srv.address) for _ in range(n)]
        received = {i: bytearray() for i in range(n)}
        with selectors.DefaultSelector() as sel:
            for i, sock in enumerate(socks):
                sock.sendall(payloads[i])
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, i)
            pending = n
            deadline = time.monotonic() + TIMEOUT * 2
            while pending:
                assert time.monotonic() < deadline, f"{pending} clients still waiting for their echo"
                for key, _ in sel.select(1.0):
                    i = key.data
                    chunk = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    assert chunk, f"client {i} got EOF"
                    received[i] += chunk
                    if len(received[i]) >= len(payloads[i]):
                        sel.unregister(key.fileobj)
                        pending -= 1
        for i in range(n):
            assert bytes(received[i]) == payloads[i], f"client {i} got wrong bytes"
        assert srv.connection_count == n
        for sock in socks:
            sock.close()
        wait_until(lambda: srv.connection_count == 0, what="all connections closed")
    assert len(handler.connected) == n
    assert all(handler.close_count(c) == 1 for c in handler.connected)


def test_concurrent_large_echoes_stay_separate() -> None:
    """16 clients x 1 MiB at once on 2 loops: no bytes crossed between connections."""
    results: dict[int, bool] = {}

    with serve(EchoRecorder(), num_loops=2) as srv:
        def one(i: int) -> None:
            rng = random.Random(1000 + i)
            payload = rng.randbytes(1 << 20)
            results[i] = echo_exchange(srv.address, payload, rng, max_chunk=200_000) == payload

        clients = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(60)
    assert results == dict.fromkeys(range(16), True)


# -- several loops ---------------------------------------------------------------------------
def connect_and_wait(srv: Any, handler: Recorder) -> tuple[socket.socket, Connection]:
    """One new connection, returned once the server's on_connect has run for it."""
    seen = len(handler.connected)
    sock = connect(srv.address)
    conns = handler.wait_connected(seen + 1)
    return sock, conns[seen]


def test_four_loops_round_robin_spreads_evenly_on_distinct_threads() -> None:
    handler = EchoRecorder()
    with serve(handler, num_loops=4, load_balance="round_robin") as srv:
        pairs = [connect_and_wait(srv, handler) for _ in range(12)]
        loops = Counter(id(conn.loop) for _, conn in pairs)
        assert len(loops) == 4
        assert set(loops.values()) == {3}
        # Each loop is one thread, and different loops are different threads.
        thread_of_loop: dict[int, int] = {}
        for _, conn in pairs:
            tid = handler.connect_thread[id(conn)]
            assert thread_of_loop.setdefault(id(conn.loop), tid) == tid
        assert len(set(thread_of_loop.values())) == 4
        for i, (sock, _) in enumerate(pairs):       # every connection still echoes
            sock.sendall(b"ping %d" % i)
            assert recv_exactly(sock, len(b"ping %d" % i)) == b"ping %d" % i
            sock.close()


def test_least_connections_fills_the_emptiest_loop() -> None:
    handler = EchoRecorder()
    with serve(handler, num_loops=4, load_balance="least_connections") as srv:
        pairs = [connect_and_wait(srv, handler) for _ in range(8)]
        loops = Counter(id(conn.loop) for _, conn in pairs)
        assert len(loops) == 4 and set(loops.values()) == {2}
        # Empty one loop; the next two connections must both go there.
        emptied = id(pairs[0][1].loop)
        for sock, conn in pairs:
            if id(conn.loop) == emptied:
                sock.close()
                handler.wait_closed(conn)
        newcomers = [connect_and_wait(srv, handler) for _ in range(2)]
        assert [id(conn.loop) for _, conn in newcomers] == [emptied, emptied]
        for sock, _ in pairs + newcomers:
            sock.close()


def test_source_addr_hash_keeps_one_source_on_one_loop() -> None:
    handler = EchoRecorder()
    with serve(handler, num_loops=4, load_balance="source_addr_hash") as srv:
        pairs = [connect_and_wait(srv, handler) for _ in range(8)]
        assert len({id(conn.loop) for _, conn in pairs}) == 1
        for sock, _ in pairs:
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
            sock.close()


def test_sends_from_other_threads_keep_per_thread_order() -> None:
    threads, per_thread = 8, 2000
    handler = Recorder()
    with serve(handler, num_loops=2) as srv:
        sock, conn = connect_and_wait(srv, handler)
        start = threading.Barrier(threads)
        errors: list[BaseException] = []

        def sender(tid: int) -> None:
            try:
                start.wait(TIMEOUT)
                for seq in range(per_thread):
                    conn.send(b"%d:%d\n" % (tid, seq))
            except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
                errors.append(exc)

        workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        expected_lines = threads * per_thread
        buf = bytearray()
        deadline = time.monotonic() + TIMEOUT * 2
        while (lines := buf.count(b"\n")) < expected_lines:
            assert time.monotonic() < deadline, f"only {lines} of {expected_lines} lines"
            chunk = sock.recv(1 << 16)
            assert chunk, "EOF before every message arrived"
            buf += chunk
        for w in workers:
            w.join(TIMEOUT)
        assert not errors, errors
        next_seq = [0] * threads
        for line in bytes(buf).split(b"\n")[:-1]:
            tid, seq = map(int, line.split(b":"))
            assert seq == next_seq[tid], f"thread {tid}: got {seq}, expected {next_seq[tid]}"
            next_seq[tid] += 1
        assert next_seq == [per_thread] * threads
        assert buf.endswith(b"\n")
        sock.close()


def test_send_inside_on_message_goes_before_the_return_value() -> None:
    class SendThenReturn(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            conn.send(b"<" + bytes(data) + b">")
            return b"!"

    with serve(SendThenReturn()) as srv:
        sock = connect(srv.address)
        with sock:
            sock.sendall(b"abc")
            assert recv_exactly(sock, 6) == b"<abc>!"


# -- addresses and data type -----------------------------------------------------------------
def test_addresses_and_message_types() -> None:
    """Messages shorter than view_threshold are bytes (cheap for ordinary handler code), longer
    ones memoryviews over the read buffer (zero copy); echoing either returns the same bytes."""
    kinds: list[tuple[type, int]] = []

    class Kinds(EchoRecorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            kinds.append((type(data), len(data)))
            return data

    handler = Kinds()
    with serve(handler) as srv:
        host, port = srv.address
        assert host == "127.0.0.1" and isinstance(port, int) and port > 0
        sock, conn = connect_and_wait(srv, handler)
        with sock:
            assert conn.peer_addr == sock.getsockname()
            assert conn.local_addr == sock.getpeername() == srv.address
            assert conn.connected
            sock.sendall(b"hello")
            assert recv_exactly(sock, 5) == b"hello"
            big = bytes(range(256)) * 40           # 10,240 bytes: one read, over the threshold
            kinds.clear()
            sock.sendall(big)
            assert recv_exactly(sock, len(big)) == big
        assert sum(n for _, n in kinds) == len(big)
        assert all((k is memoryview) == (n >= 4096) for k, n in kinds)
    kinds.clear()
    handler = Kinds()
    with serve(handler, view_threshold=0) as srv:
        sock, conn = connect_and_wait(srv, handler)
        with sock:
            sock.sendall(b"hello")
            assert recv_exactly(sock, 5) == b"hello"
    assert kinds == [(memoryview, 5)]
    kinds.clear()
    handler = Kinds()
    with serve(handler, view_threshold=None) as srv:
        sock, conn = connect_and_wait(srv, handler)
        with sock:
            sock.sendall(b"x" * 20000)
            assert recv_exactly(sock, 20000) == b"x" * 20000
    assert kinds and all(k is bytes for k, n in kinds)


def test_small_message_is_bytes_by_default() -> None:
    kinds: list[type] = []

    class Kinds(EchoRecorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            kinds.append(type(data))
            return data

    handler = Kinds()
    with serve(handler) as srv:
        sock, conn = connect_and_wait(srv, handler)
        with sock:
            sock.sendall(b"hello")
            assert recv_exactly(sock, 5) == b"hello"
    assert kinds == [bytes]


def test_addresses_stay_readable_in_on_close_and_after() -> None:
    """Logging who disconnected is the commonest use of peer_addr; like asyncio's cached
    'peername' (and gev's PeerAddr), the addresses must outlive the socket."""
    seen: list[tuple[Any, Any]] = []

    class LogsPeer(EchoRecorder):
        def on_close(self, conn: Connection, error: BaseException | None) -> None:
            if conn is self.connected[0]:
                seen.append((conn.peer_addr, conn.local_addr))
            super().on_close(conn, error)

    handler = LogsPeer()
    with serve(handler) as srv:
        first, second, probe = (connect(srv.address) for _ in range(3))
        first_addr, second_addr = first.getsockname(), second.getsockname()
        conns = handler.wait_connected(3)           # addresses not read while open
        first.close()
        second.close()
        handler.wait_closed(conns[0])
        handler.wait_closed(conns[1])
        with probe:                                 # one loop: a round trip after the closes
            probe.sendall(b"sync")                  # means the close handling has finished
            assert recv_exactly(probe, 4) == b"sync"
        assert seen == [(first_addr, srv.address)]             # read in on_close
        assert (conns[0].peer_addr, conns[0].local_addr) == (first_addr, srv.address)
        # Read for the first time only after the connection is gone.
        assert (conns[1].peer_addr, conns[1].local_addr) == (second_addr, srv.address)


def test_reply_types() -> None:
    """on_message may return any bytes-like object, a slice of `data`, b"" or None."""
    requests: list[bytes] = []

    class Replies(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            request = bytes(data)
            requests.append(request)
            if request == b"bytearray":
                return bytearray(b"<bytearray>")
            if request == b"slice":
                return data[1:3]
            if request == b"memoryview":
                return memoryview(b"<memoryview>")
            if request == b"empty":
                conn.send(b"")
                return b""
            if request == b"none":
                return None
            return data

    with serve(Replies()) as srv:
        sock = connect(srv.address)
        with sock:
            for request, reply in [(b"bytearray", b"<bytearray>"), (b"slice", b"li"), (b"empty", b""),
                                   (b"none", b""), (b"memoryview", b"<memoryview>"), (b"end", b"end")]:
                sock.sendall(request)
                if reply:
                    assert recv_exactly(sock, len(reply)) == reply
                else:       # nothing comes back: wait until it was handled on its own
                    wait_until(lambda r=request: requests[-1:] == [r], what=f"{request!r} handled")
        assert requests[-1] == b"end"


def test_ipv6_loopback_address_is_a_four_tuple() -> None:
    handler = EchoRecorder()
    with serve(handler, address="[::1]:0") as srv:
        assert len(srv.address) == 4 and srv.address[0] == "::1"
        sock = connect(srv.address)
        with sock:
            conn = handler.wait_connected(1)[0]
            assert conn.peer_addr == sock.getsockname()
            sock.sendall(b"six")
            assert recv_exactly(sock, 3) == b"six"


def test_unix_socket_address_is_the_path(tmp_path: Any) -> None:
    path = str(tmp_path / "pygev.sock")
    handler = EchoRecorder()
    with serve(handler, address=path, network="unix") as srv:
        assert srv.address == path
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            conn = handler.wait_connected(1)[0]
            assert conn.local_addr == path
            sock.sendall(b"unix")
            assert recv_exactly(sock, 4) == b"unix"


def test_context_and_pending_read() -> None:
    """conn.context is the user's slot; pending_read counts bytes a protocol left unconsumed."""

    class NeedsTen(Protocol):
        def unpacket(self, conn: Connection, buffer: Any) -> Any:
            if len(buffer) < 10:
                return None
            return None, buffer.read(10)

    class Counting(Recorder):
        def on_connect(self, conn: Connection) -> None:
            conn.context = {"messages": 0}
            super().on_connect(conn)

        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            conn.context["messages"] += 1
            return b"%d:" % conn.context["messages"] + bytes(data)

    handler = Counting()
    with serve(handler, protocol=NeedsTen()) as srv:
        sock = connect(srv.address)
        with sock:
            conn = handler.wait_connected(1)[0]
            assert conn.pending_read == 0
            sock.sendall(b"12345")
            wait_until(lambda: conn.pending_read == 5, what="5 buffered bytes")
            sock.sendall(b"67890abc")
            assert recv_exactly(sock, 12) == b"1:1234567890"
            wait_until(lambda: conn.pending_read == 3, what="3 buffered bytes")
            assert conn.context == {"messages": 1}
            assert conn.pending_write == 0
