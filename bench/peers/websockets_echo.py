"""WebSocket echo peer on the `websockets` library (asyncio or uvloop), no compression."""

from __future__ import annotations


from common import parse_args, run
from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    """Send every message back as it came (binary stays binary)."""
    async for message in ws:
        await ws.send(message)


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])

    async def main() -> None:
        async with serve(echo, "127.0.0.1", args.port, compression=None, backlog=4096) as server:
            await server.serve_forever()

    run(main, args.loop)
