"""Keeping `data` after on_message returns is the user's bug, but it must never crash the
interpreter (SPEC).  The scripts run in a subprocess so a segfault fails the test (exit code
-11) instead of killing pytest."""
from __future__ import annotations

import pytest
from support import run_python

KEEP_VIEWS = r"""
import gc, os, random, socket
from reactor import Handler, Protocol, Server

PROTOCOL = os.environ["KEEP_VIEWS_PROTOCOL"]
kept = []

class Frames(Protocol):
    # 1000-byte frames handed out as views of the connection's buffer (no copy).
    def unpacket(self, conn, buffer):
        if len(buffer) < 1000:
            return None
        view = buffer.peek(1000)
        buffer.retrieve(1000)
        return None, view

class Keep(Handler):
    def on_message(self, conn, ctx, data):
        kept.append(data)                       # the bug under test: keeping the view
        kept.append(data[3:10])
        return data if len(kept) % 4 else bytes(data)

def exchange(addr, payload):
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(payload)
        got = bytearray()
        while len(got) < len(payload):
            chunk = s.recv(1 << 20)
            assert chunk, "EOF"
            got += chunk
        assert bytes(got) == payload

rng = random.Random(5)
protocol = Frames() if PROTOCOL == "frames" else None
with Server(Keep(), address="127.0.0.1:0", num_loops=2, protocol=protocol) as srv:
    for round_ in range(12):
        size = rng.choice([1000, 5000, 70000, 300000])
        exchange(srv.address, rng.randbytes(size))
        mid = [bytes(v[:1]) for v in kept[-50:]]     # touch old views while traffic flows
del srv
gc.collect()
junk = [bytearray(1 << 20) for _ in range(16)]
for v in kept:
    try:
        bytes(v)
        if len(v):
            v[0], v[-1]
    except ValueError:                               # a released view is acceptable
        pass
print(len(kept), sum(map(len, kept)))
"""


@pytest.mark.parametrize("protocol", ["default", "frames"])
def test_keeping_data_after_on_message_never_crashes(protocol: str) -> None:
    out = run_python(KEEP_VIEWS, {"KEEP_VIEWS_PROTOCOL": protocol})
    assert int(out.split()[-1]) > 0, "the handler never saw a message"
