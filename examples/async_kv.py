"""Async line GET server: the handler awaits an asyncio store (each lookup takes ~1 ms, like a
round trip to a database or cache), and replies still leave in request order.

    python examples/async_kv.py --port 1836
    printf 'GET key0042\\nGET key0007\\n' | nc -q1 127.0.0.1 1836

`async def on_message` runs on an asyncio loop (uvloop's when installed) that pygev runs in a
thread of its own; the message arrives as `bytes`, the coroutine's return value is the reply.
Pipelined requests are looked up concurrently, and their answers are written in the order the
requests came (a later request that finishes first waits for the earlier ones).  At most
`max_pending_replies` lookups of one connection are in flight; past that, pygev stops reading
it.  Same protocol and store as examples/line_get.py (the bench's `get` workload).
"""
from __future__ import annotations

import argparse
import asyncio
import logging

from reactor import Handler, Server
from reactor.codec import LineProtocol

# key0042 -> b"value-0042-abcdefghijklmnopqrstuvwxyz" (37 bytes)
STORE = {b"key%04d" % i: b"value-%04d-abcdefghijklmnopqrstuvwxyz" % i for i in range(1000)}


class SlowStore:
    """An asyncio key-value store whose every lookup takes `latency` seconds."""

    def __init__(self, data: dict[bytes, bytes], latency: float) -> None:
        self.data = data
        self.latency = latency

    async def get(self, key: bytes) -> bytes | None:
        await asyncio.sleep(self.latency)
        return self.data.get(key)


class AsyncGet(Handler):
    def __init__(self, store: SlowStore) -> None:
        self.store = store

    async def on_message(self, conn, ctx, data):     # data: the line, as bytes
        if data[:4] != b"GET ":
            return b"BAD_REQUEST"
        value = await self.store.get(data[4:])
        return b"NOT_FOUND" if value is None else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1836)
    parser.add_argument("--latency", type=float, default=0.001, help="seconds per lookup")
    parser.add_argument("--max-pending", type=int, default=64, help="lookups in flight per connection")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = Server(AsyncGet(SlowStore(STORE, args.latency)), address=f"{args.host}:{args.port}",
                    protocol=LineProtocol(), max_pending_replies=args.max_pending)
    server.start()


if __name__ == "__main__":
    main()
