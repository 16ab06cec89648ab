"""Backpressure: a client that sends requests but never reads must not make the server buffer
without bound.  Past write_high_water the server stops reading that connection; once the client
reads again, everything arrives, in order, and the server resumes."""
from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import Any

from support import TIMEOUT, Recorder, connect, serve

from reactor import Connection

REPLY = 64 << 10
HIGH = 256 << 10
LOW = 64 << 10
FILLER = b"r" * (REPLY - 4)


class BigReplies(Recorder):
    """Answers every message (every read, with the default protocol) with 64 KiB tagged by a
    sequence number, and counts the request bytes it consumed."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_in = 0
        self.replies = 0

    def on_message(self, conn: Connection, ctx: Any, data: Any) -> Any:
        self.bytes_in += len(data)
        seq = self.replies
        self.replies += 1
        return struct.pack(">I", seq) + FILLER


class PeakWatcher:
    """Samples conn.pending_write from a side thread and keeps the maximum seen."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.peak = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.conn.pending_write)
            time.sleep(0.001)

    def stop(self) -> int:
        self.running = False
        self.thread.join(TIMEOUT)
        return self.peak


def send_until_stalled(sock: socket.socket, cap: int) -> int:
    """Send 100-byte requests until the socket stays unwritable for 0.5 s (the server stopped
    reading) or `cap` bytes went out; return the bytes sent."""
    sock.setblocking(False)
    request = b"q" * 100
    sent = 0
    while sent < cap:
        try:
            sent += sock.send(request)
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], 0.5)
            if not writable:
                break
    return sent


def test_stalled_reader_pauses_reading_and_bounds_memory() -> None:
    handler = BigReplies()
    with serve(handler, write_high_water=HIGH, write_low_water=LOW) as srv:
        sock = connect(srv.address, rcvbuf=16 << 10, sndbuf=16 << 10)
        with sock:
            conn = handler.wait_connected(1)[0]
            watcher = PeakWatcher(conn)
            sent = send_until_stalled(sock, cap=16 << 20)
            stalled_peak = max(watcher.peak, conn.pending_write)
            # A server that kept reading would have queued a reply per read of those
            # requests (16 MiB of requests -> hundreds of replies) and never let us stall.
            assert sent < 16 << 20, f"sent {sent} bytes without the server ever pausing"
            assert conn.pending_write > 0, "nothing queued: the server never paused on output"
            assert stalled_peak <= HIGH + REPLY, f"pending_write peaked at {stalled_peak}"

            # Now read: every reply arrives, in order, and the server resumes reading.
            sock.setblocking(True)
            received = 0
            next_seq = 0
            pending = b""
            deadline = time.monotonic() + 3 * TIMEOUT
            while handler.bytes_in < sent or received < handler.replies * REPLY:
                assert time.monotonic() < deadline, (
                    f"server consumed {handler.bytes_in} of {sent} request bytes, "
                    f"we got {received} of {handler.replies * REPLY} reply bytes")
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(1 << 20)
                assert chunk, "EOF while draining"
                pending += chunk
                received += len(chunk)
                while len(pending) >= REPLY:
                    seq = struct.unpack_from(">I", pending)[0]
                    assert seq == next_seq, f"reply {seq} arrived where {next_seq} was due"
                    assert pending[4:REPLY] == FILLER
                    next_seq += 1
                    pending = pending[REPLY:]
            peak = watcher.stop()
            assert pending == b"" and next_seq == handler.replies
            assert handler.bytes_in == sent
            assert peak <= HIGH + REPLY, f"pending_write peaked at {peak}"
            assert conn.connected
