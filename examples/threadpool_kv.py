"""Blocking work off the event loop: each GET runs a blocking lookup (here a sqlite3 query) in
the server's thread pool; the Future it returns is the reply, sent in request order.

    python examples/threadpool_kv.py --port 1837
    printf 'GET key0042\\nGET key0999\\n' | nc -q1 127.0.0.1 1837

`server.executor` is a ThreadPoolExecutor made on first use and shut down at stop.  Returning
`executor.submit(...)` from on_message is all it takes: pygev waits for the Future without
blocking the loop and keeps the connection's replies in order.  The message is copied with
`bytes(data)` before it crosses to the pool (a large message is a view valid for the call only).
"""
from __future__ import annotations

import argparse
import logging
import sqlite3
import threading

from reactor import Handler, Server
from reactor.codec import LineProtocol

_local = threading.local()


def lookup(path: str, key: bytes) -> bytes:
    """Blocking: one SQL query on this pool thread's own connection."""
    db = getattr(_local, "db", None)
    if db is None:
        db = _local.db = sqlite3.connect(path, check_same_thread=False)
    row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return row[0] if row else b"NOT_FOUND"


def make_db(path: str) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB)")
    db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)",
                   [(b"key%04d" % i, b"value-%04d-abcdefghijklmnopqrstuvwxyz" % i) for i in range(1000)])
    db.commit()
    db.close()


class PoolGet(Handler):
    def __init__(self, path: str) -> None:
        self.path = path
        self.server: Server | None = None

    def on_message(self, conn, ctx, data):
        if data[:4] != b"GET ":
            return b"BAD_REQUEST"
        assert self.server is not None
        return self.server.executor.submit(lookup, self.path, bytes(data[4:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1837)
    parser.add_argument("--db", default="/tmp/pygev-threadpool-kv.sqlite3")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    make_db(args.db)
    handler = PoolGet(args.db)
    server = handler.server = Server(handler, address=f"{args.host}:{args.port}",
                                     protocol=LineProtocol())
    server.start()


if __name__ == "__main__":
    main()
