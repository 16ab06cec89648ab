"""TLS for a connection: an ssl.SSLObject over memory BIOs, fed by the event loop.

The loop hands received ciphertext to `feed()` and gets plaintext back; replies go through
`encrypt()`; whatever the TLS engine wants to send (handshake records, alerts, ciphertext) is
collected with `take_output()` and queued on the connection as it is.  TLS gives up the zero-copy
paths (the engine copies by nature); everything else - protocols, codecs, backpressure - is
unchanged.
"""
from __future__ import annotations

import ssl
from typing import Any


class TlsSession:
    """Server side of one TLS connection, with no socket of its own."""

    __slots__ = ("_obj", "_incoming", "_outgoing", "_ready", "_pending", "closed_by_peer")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._ready = False
        self._pending: list[Any] = []       # plaintext sent before the handshake finished
        self.closed_by_peer = False         # the peer sent close_notify

    def feed(self, data: Any) -> bytes:
        """Decrypt received bytes; returns the plaintext now available (maybe b"").
        Raises ssl.SSLError on anything that is not valid TLS."""
        self._incoming.write(data)
        if not self._ready:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self._ready = True
            pending, self._pending = self._pending, []
            for chunk in pending:
                self._obj.write(chunk)
        chunks = []
        while True:
            try:
                chunk = self._obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:                   # b"" (or ZeroReturn): the peer sent close_notify
                self.closed_by_peer = True
                try:
                    self._obj.unwrap()      # answer with our close_notify
                except ssl.SSLError:
                    pass
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def encrypt(self, data: Any) -> None:
        """Queue plaintext for sending (held back until the handshake is done)."""
        if self._ready:
            self._obj.write(data)
        else:
            self._pending.append(bytes(data))

    def take_output(self) -> bytes:
        """Everything the TLS engine has to send right now."""
        return self._outgoing.read()
