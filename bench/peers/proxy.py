"""asyncio / uvloop TCP proxy peer, written the usual way: per client `create_connection` to the
upstream, `transport.write` both ways, and flow control through the transports' high-water marks
(`pause_writing` of one side pauses reading the other, `resume_writing` resumes it); half-close
passed through with `write_eof`.

    python bench/peers/proxy.py --port N --upstream 127.0.0.1:M --loop uvloop
"""

from __future__ import annotations

import argparse
import asyncio

from common import run


class Side(asyncio.Protocol):
    """One side of a proxied pair; `peer` is the other side's Side."""

    def __init__(self, peer: Side | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()


class Client(Side):
    """The accepted side: dials the upstream, reads once it is connected."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.early: list[bytes] = []  # read before the upstream connected

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)  # type: ignore[union-attr]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]
        asyncio.ensure_future(self.dial())

    async def dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, upstream = await loop.create_connection(lambda: Side(self), self.host, self.port)
        except OSError:
            self.transport.close()  # type: ignore[union-attr]
            return
        self.peer = upstream
        for data in self.early:
            transport.write(data)
        self.early = []
        self.transport.resume_reading()  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Client(host, int(port)), "127.0.0.1", args.port,
                                          backlog=4096)
        async with server:
            await server.serve_forever()

    run(serve, args.loop)


if __name__ == "__main__":
    main()
