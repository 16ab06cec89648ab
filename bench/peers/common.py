"""Shared start-up for the peer servers: `--port N`, bind 127.0.0.1, pick the event loop, stop on SIGTERM.

Every peer is a plain script (`python bench/peers/<name>.py --port N`) so the harness can pin it to a
core with taskset and read its CPU time from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any


def parse_args(description: str, *, loops: bool = True, framed: bool = False) -> argparse.Namespace:
    """Parse the options every peer takes: --port, and --loop / --framed where they apply."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    if loops:
        parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop")
    if framed:
        parser.add_argument(
            "--framed", action="store_true", help="4-byte big-endian length-framed echo instead of raw echo"
        )
    return parser.parse_args()


def run(main: Callable[[], Coroutine[Any, Any, None]], loop: str) -> None:
    """Run the coroutine function `main` on the chosen loop until SIGTERM or SIGINT."""
    if loop == "uvloop":
        import uvloop

        uvloop.install()

    async def runner() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        task = asyncio.ensure_future(main())
        await stop.wait()
        task.cancel()

    asyncio.run(runner())


def serve_protocol(factory: Callable[[], asyncio.BaseProtocol], port: int, loop: str) -> None:
    """Serve `factory` on 127.0.0.1:port with a backlog deep enough for 10k connections."""

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    run(main, loop)
