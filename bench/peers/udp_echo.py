"""asyncio DatagramProtocol UDP echo peer (asyncio or uvloop): every datagram goes back to its sender.

Written the usual way: `datagram_received` calls `transport.sendto(data, addr)`.
"""

from __future__ import annotations

import asyncio

from common import parse_args, run


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sendto = transport.sendto  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.sendto(data, addr)


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])

    async def main() -> None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            UdpEcho, local_addr=("127.0.0.1", args.port)
        )
        try:
            await asyncio.Event().wait()
        finally:
            transport.close()

    run(main, args.loop)
