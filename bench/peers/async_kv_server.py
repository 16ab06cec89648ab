"""Async line GET peer on asyncio.Protocol (asyncio or uvloop): the service of examples/async_kv.py.

Request `GET <key>\\n`; the reply is the key's value and `\\n` after an `await` on a store whose every
lookup sleeps 1 ms (`NOT_FOUND\\n` / `BAD_REQUEST\\n` as in line_get_server.py).  Written the way a
careful asyncio developer writes it: `data_received` splits the read with `bytes.split`, starts one
task per request, keeps the tasks in request order, and writes every reply at the head that is done
as one `transport.write` when a task finishes (so pipelined answers keep their order); past
MAX_PENDING unanswered requests it pauses reading, like pygev's max_pending_replies.
"""

from __future__ import annotations

import asyncio
from collections import deque

from common import parse_args, serve_protocol

MAX_LINE = 65536
MAX_PENDING = 64
LATENCY = 0.001
STORE = {b"key%04d" % i: b"value-%04d-abcdefghijklmnopqrstuvwxyz" % i for i in range(1000)}


class SlowStore:
    async def get(self, key: bytes) -> bytes | None:
        await asyncio.sleep(LATENCY)
        return STORE.get(key)


store = SlowStore()


async def handle(line: bytes) -> bytes:
    if line[:4] != b"GET ":
        return b"BAD_REQUEST\n"
    value = await store.get(line[4:])
    return b"NOT_FOUND\n" if value is None else value + b"\n"


class AsyncGet(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pending = b""
        self.tasks: deque[asyncio.Task] = deque()
        self.paused = False

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        lines = data.split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            task = asyncio.ensure_future(handle(line))
            task.add_done_callback(self.answered)
            self.tasks.append(task)
        if len(self.tasks) >= MAX_PENDING and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]
        if len(self.pending) > MAX_LINE:
            self.transport.close()

    def answered(self, _task: asyncio.Task) -> None:
        tasks = self.tasks
        out = []
        while tasks and tasks[0].done():
            out.append(tasks.popleft().result())
        if out and not self.transport.is_closing():
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]
        if self.paused and len(tasks) < MAX_PENDING:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    serve_protocol(AsyncGet, args.port, args.loop)
