"""UdpPeer: the Connection of one UDP peer (udp.py's endpoints make and own them).

A peer is every datagram from one address on a server socket, or the peer of a connected
socket.  Its methods hand work to its endpoint (`_ep`), on the loop thread; `send()` from
another thread is copied and posted.  The address is kept as the raw PG_UDP_ADDR entry (the
peer table's key) and decoded when asked.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .connection import Connection
from .errors import ConnectionClosed
from .sockaddr import decode_sockaddr

if TYPE_CHECKING:
    from .udp import UdpEndpoint

_get_ident = threading.get_ident


class UdpPeer(Connection):
    """One UDP peer: every datagram from one address (or the peer of a connected socket).
    send() queues one datagram; close() forgets the peer; shutdown_write() refuses later
    sends (UDP has no FIN); pause_reading() drops the peer's datagrams until resumed."""

    __slots__ = ("_key", "_ep")
    ordered = False

    def __init__(self, ep: UdpEndpoint, key: bytes, now: float) -> None:
        super().__init__(ep.loop, ep.fd, now)
        self._key = key
        self._ep = ep

    def send(self, data: Any) -> None:
        """Queue `data` as one datagram to this peer (any thread); b"" is an empty datagram."""
        if self._state or self._shut:
            raise ConnectionClosed(f"{self!r} is closed")
        ep = self._ep
        if self._loop.thread_id == _get_ident():
            ep.queue(self, data, "send()")
        else:
            ep.post(self, data)

    send_raw = send

    def close(self, error: BaseException | None = None) -> None:
        """Forget this peer (its queued datagrams still go out); on_close(conn, error) follows."""
        if self._state:
            return
        self._loop.call_here(self._ep.close_peer, self, error, "local")

    def shutdown_write(self) -> None:
        if self._state:
            raise ConnectionClosed(f"{self!r} is closed")
        self._shut = 2

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> None:
        raise TypeError("sendfile() needs a stream connection (TCP or unix), not a UDP peer")

    def pause_reading(self) -> None:
        self._loop.call_here(self._ep.set_paused, self, True)

    def resume_reading(self) -> None:
        self._loop.call_here(self._ep.set_paused, self, False)

    @property
    def peer_addr(self) -> Any:
        if self._peer is None and self._key:
            self._peer = decode_sockaddr(self._key)
        return self._peer

    @property
    def local_addr(self) -> Any:
        return self._ep.local

    @property
    def pending_write(self) -> int:
        return self._ep.queued(self) + self._posted


def datagram(data: Any, source: str) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        raise TypeError(f"{source} gave str; a datagram is bytes (encode it first)")
    try:
        return memoryview(data).tobytes()
    except TypeError:
        raise TypeError(f"{source} gave {type(data).__name__}, not a bytes-like object "
                        "(bytes, bytearray, memoryview)") from None




__all__ = ["UdpPeer", "datagram"]
