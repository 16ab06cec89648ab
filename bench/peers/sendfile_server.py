"""asyncio file server peer: each request (any bytes) is answered with a whole file.

asyncio: `await loop.sendfile(transport, file)` (zero copy through os.sendfile).  uvloop does not
implement loop.sendfile (NotImplementedError, uvloop issue #228), so with --loop uvloop the file is
read in 256 KiB chunks and written with transport.write, waiting for drain past the high-water mark:
what a uvloop user writes instead.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

from common import parse_args, run

CHUNK = 256 << 10


class FileProtocol(asyncio.Protocol):
    def __init__(self, file, use_sendfile: bool) -> None:
        self.file = file
        self.use_sendfile = use_sendfile
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        asyncio.ensure_future(self.send_file())

    async def send_file(self) -> None:
        if self.use_sendfile:
            await asyncio.get_running_loop().sendfile(self.transport, self.file, 0)
            return
        offset = 0
        fd = self.file.fileno()
        while True:
            chunk = os.pread(fd, CHUNK, offset)
            if not chunk:
                return
            offset += len(chunk)
            self.transport.write(chunk)
            if not self.writable.is_set():
                await self.writable.wait()


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    file = tempfile.TemporaryFile()
    block = os.urandom(1 << 20)
    for _ in range(64):
        file.write(block)
    file.flush()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: FileProtocol(file, args.loop == "asyncio"), "127.0.0.1",
                                          args.port)
        async with server:
            await server.serve_forever()

    run(main, args.loop)
