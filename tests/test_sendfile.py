"""conn.sendfile(): file regions in order with send() and replies, larger than the socket
buffers, with offset/count, over TLS, from another thread, bad arguments, pending_write."""
from __future__ import annotations

import errno
import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from reactor import Connection, Handler
from support import (TIMEOUT, Recorder, connect, open_fds, recv_exactly, recv_to_eof, serve,
                     wait_until)

DATA = Path(__file__).parent / "data"
BIG = 8 << 20


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = os.urandom(BIG)
    path = tmp_path_factory.mktemp("sendfile") / "big.bin"
    path.write_bytes(data)
    return path, data


def fixed_send_buffer(conn: Connection, size: int = 64 << 10) -> None:
    """A fixed (not autotuned) send buffer on the server's socket: output queued past it stays
    in pygev, whatever this machine's TCP memory settings."""
    dup = socket.socket(fileno=os.dup(conn.fd))
    dup.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    dup.close()


class Sender(Recorder):
    """On each message, runs `plan(conn)` and returns its reply."""

    def __init__(self, plan: Any) -> None:
        super().__init__()
        self.plan = plan
        self.errors: list[BaseException] = []

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        try:
            return self.plan(conn)
        except Exception as exc:
            self.errors.append(exc)
            return b"E"


def test_sendfile_interleaved_with_sends_in_order(big_file: tuple[Path, bytes]) -> None:
    path, data = big_file
    before = open_fds()
    with open(path, "rb") as f:
        def plan(conn: Connection) -> bytes:
            conn.send(b"<head>")
            conn.sendfile(f)
            conn.send(b"<mid>")
            conn.sendfile(f.fileno(), 1000, 5000)   # a descriptor, with offset and count
            conn.send(b"<tail>")
            return b"<reply>"

        with serve(Sender(plan)) as srv:
            # a small receive buffer: most of the 8 MiB waits in pygev, in order
            sock = connect(srv.address, rcvbuf=64 << 10)
            sock.sendall(b"go")
            want = b"<head>" + data + b"<mid>" + data[1000:6000] + b"<tail><reply>"
            assert recv_exactly(sock, len(want), timeout=30) == want
            sock.sendall(b"go")                      # and again on the same connection
            assert recv_exactly(sock, len(want), timeout=30) == want
            sock.close()
    wait_until(lambda: open_fds() <= before, what="the duplicated descriptors closed")


def test_pending_write_counts_the_file(big_file: tuple[Path, bytes]) -> None:
    """A file queued behind output the kernel cannot take (the client reads nothing yet) counts
    whole in pending_write, and everything arrives in order once the client reads."""
    path, data = big_file
    ahead = b"a" * (8 << 20)            # more than the kernel buffers hold: they stay full
    seen: list[int] = []
    queued = threading.Event()
    with open(path, "rb") as f:
        def later(conn: Connection) -> None:     # a later turn: the socket is full by now
            before = conn.pending_write
            conn.sendfile(f)
            seen.extend((conn.pending_write - before, conn.pending_write))
            queued.set()

        def plan(conn: Connection) -> None:
            fixed_send_buffer(conn)
            conn.send(ahead)
            conn.loop.run_after(0.2, later, conn)
            return None

        h = Sender(plan)
        with serve(h) as srv:
            sock = connect(srv.address, rcvbuf=64 << 10)
            sock.sendall(b"go")
            assert queued.wait(TIMEOUT)
            assert recv_exactly(sock, len(ahead) + BIG, timeout=30) == ahead + data
            conn = h.wait_connected(1)[0]
            wait_until(lambda: conn.pending_write == 0, what="everything sent")
            sock.close()
    assert seen[0] == BIG and seen[1] >= BIG


def test_sendfile_then_close_delivers_everything(big_file: tuple[Path, bytes]) -> None:
    path, data = big_file

    with open(path, "rb") as f:
        def plan(conn: Connection) -> bytes:
            conn.sendfile(f, BIG - 300_000)
            conn.close()                        # after the queued output is written
            return b"!"

        h = Sender(plan)
        with serve(h) as srv:
            sock = connect(srv.address, rcvbuf=32 << 10)
            sock.sendall(b"x")
            assert recv_to_eof(sock, timeout=30) == data[BIG - 300_000:] + b"!"
            conn = h.wait_connected(1)[0]
            assert h.wait_closed(conn) is None
            sock.close()
        assert os.fstat(f.fileno()).st_size == BIG     # pygev did not close the caller's file


def test_caller_may_close_its_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "small.bin"
    path.write_bytes(b"0123456789" * 100_000)

    def plan(conn: Connection) -> bytes:
        with open(path, "rb") as f:
            conn.sendfile(f, 5, 1_000_000 - 10)
        return b"#"                             # pygev sends from its own duplicate

    with serve(Sender(plan)) as srv:
        sock = connect(srv.address, rcvbuf=32 << 10)
        sock.sendall(b"x")
        want = (b"0123456789" * 100_000)[5:-5] + b"#"
        assert recv_exactly(sock, len(want), timeout=30) == want
        sock.close()


def test_sendfile_over_tls(big_file: tuple[Path, bytes]) -> None:
    path, data = big_file
    size = 3 << 20
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(DATA / "localhost.crt", DATA / "localhost.key")
    with open(path, "rb") as f:
        def plan(conn: Connection) -> bytes:
            conn.send(b"[")
            conn.sendfile(f, 7, size)
            conn.send(b"|")
            conn.sendfile(f, 0, 10)
            return b"]"

        with serve(Sender(plan), ssl=ctx) as srv:
            cctx = ssl.create_default_context(cafile=str(DATA / "localhost.crt"))
            with cctx.wrap_socket(connect(srv.address, rcvbuf=64 << 10),
                                  server_hostname="localhost") as sock:
                sock.sendall(b"go")
                want = b"[" + data[7:7 + size] + b"|" + data[:10] + b"]"
                assert recv_exactly(sock, len(want), timeout=30) == want
                sock.sendall(b"go")
                assert recv_exactly(sock, len(want), timeout=30) == want


def test_sendfile_from_another_thread(big_file: tuple[Path, bytes]) -> None:
    path, data = big_file
    h = Recorder()
    with open(path, "rb") as f, serve(h) as srv:
        sock = connect(srv.address)
        conn = h.wait_connected(1)[0]
        t = threading.Thread(target=lambda: (conn.send(b"a"), conn.sendfile(f, 0, 1 << 20),
                                             conn.send(b"z")))
        t.start()
        t.join(TIMEOUT)
        want = b"a" + data[:1 << 20] + b"z"
        assert recv_exactly(sock, len(want), timeout=30) == want
        wait_until(lambda: conn.pending_write == 0, what="all sent")
        sock.close()


def test_bad_arguments_name_the_argument(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    results: list[Any] = []
    closed = open(path, "rb")
    closed.close()
    r_fd, w_fd = os.pipe()
    dir_fd = os.open(tmp_path, os.O_RDONLY)

    class Check(Handler):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            with open(path, "rb") as f, open(path, "ab") as wo:
                for args, kwargs in (
                    ((b"not a file",), {}), (("name.txt",), {}), ((True,), {}),
                    ((f,), {"offset": -1}), ((f,), {"offset": 1.5}), ((f,), {"count": -2}),
                    ((f,), {"count": "3"}), ((closed,), {}), ((str(tmp_path),), {}),
                    ((dir_fd,), {}), ((f,), {"offset": 101}),
                    ((f,), {"offset": 50, "count": 51}), ((r_fd,), {}), ((10**6,), {}),
                    ((wo,), {}),
                ):
                    try:
                        conn.sendfile(*args, **kwargs)
                        results.append(None)
                    except (TypeError, ValueError) as exc:
                        results.append(exc)
                conn.sendfile(f, 100)           # count None at the end: nothing, no error
                conn.sendfile(f, 90, 0)
                conn.sendfile(f, 95)
            return b"!"

    with serve(Check()) as srv:
        sock = connect(srv.address)
        sock.sendall(b"x")
        assert recv_exactly(sock, 6) == b"xxxxx!"
        sock.close()
    os.close(r_fd)
    os.close(w_fd)
    os.close(dir_fd)
    kinds = [type(r).__name__ if r is not None else None for r in results]
    assert kinds == ["TypeError", "TypeError", "TypeError", "ValueError", "TypeError",
                     "ValueError", "TypeError", "ValueError", "TypeError", "ValueError",
                     "ValueError", "ValueError", "ValueError", "ValueError", "ValueError"]
    texts = [str(r) for r in results]
    assert "offset" in texts[3] and "offset" in texts[4] and "count" in texts[5]
    assert "count" in texts[6] and "closed" in texts[7] and "directory" in texts[9]
    assert "offset" in texts[10] and "count" in texts[11] and "regular file" in texts[12]
    assert "not open" in texts[13] and "reading" in texts[14]


def test_truncated_while_queued_aborts_after_what_exists(tmp_path: Path) -> None:
    path = tmp_path / "shrinks.bin"
    content = os.urandom(4 << 20)
    path.write_bytes(content)
    ahead = b"m" * (8 << 20)         # in memory before the file: it is not touched until sent

    class Shrink(Recorder):
        def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
            fixed_send_buffer(conn)     # so `ahead` fills the kernel and the file waits its turn
            conn.send(ahead)
            with open(path, "rb") as f:
                conn.sendfile(f)
            os.truncate(path, 1 << 20)          # the file loses 3 MiB before its turn
            conn.send(b"never")
            return None

    h = Shrink()
    with serve(h) as srv:
        sock = connect(srv.address, rcvbuf=32 << 10)
        sock.sendall(b"x")
        got = recv_to_eof(sock, timeout=30)
        assert got == ahead + content[:1 << 20]
        conn = h.wait_connected(1)[0]
        err = h.wait_closed(conn)
        assert isinstance(err, OSError) and err.errno == errno.ENODATA
        sock.close()


def test_tls_sendfile_before_handshake_and_close_after_it(big_file: tuple[Path, bytes]) -> None:
    """Queued in on_connect (before the handshake): it waits for it.  close() right after a
    sendfile: close_notify goes out only after the file."""
    path, data = big_file
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(DATA / "localhost.crt", DATA / "localhost.key")

    class Push(Recorder):
        def on_connect(self, conn: Connection) -> None:
            super().on_connect(conn)
            with open(path, "rb") as f:
                conn.sendfile(f, 0, 1 << 20)
            conn.send(b"end")

        def on_message(self, conn: Connection, ctx: Any, msg: Any) -> Any:
            with open(path, "rb") as f:
                conn.sendfile(f, 5, 2 << 20)
            conn.close()
            return b"bye"

    h = Push()
    with serve(h, ssl=ctx) as srv:
        cctx = ssl.create_default_context(cafile=str(DATA / "localhost.crt"))
        with cctx.wrap_socket(connect(srv.address, rcvbuf=64 << 10),
                              server_hostname="localhost") as sock:
            assert recv_exactly(sock, (1 << 20) + 3, timeout=30) == data[:1 << 20] + b"end"
            sock.sendall(b"x")
            got = recv_to_eof(sock, timeout=30)     # b"" at the server's close_notify
        assert got == data[5:5 + (2 << 20)] + b"bye"
        assert h.wait_closed(h.wait_connected(1)[0]) is None
