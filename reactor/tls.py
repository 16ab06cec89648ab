"""TLS as a stream layer: an ssl.SSLObject over memory BIOs, between the socket and the protocol.

The reader hands received ciphertext to `feed()` and gets plaintext back; the output side
passes each turn's framed replies of a connection through `encrypt()` once; whatever the TLS
engine wants to send (handshake records, alerts, ciphertext, close_notify) is collected with
`take_output()` / `shutdown()` and queued on the connection as it is.  TLS gives up the
zero-copy paths (the engine copies by nature); protocols, codecs and backpressure are unchanged.

Order rules: plaintext sent before the handshake ends waits (`pending` bytes, counted in
pending_write) and is encrypted the moment the handshake completes.  A peer's close_notify does
not shut us down at once: the plaintext that came with it is delivered, the replies to it are
encrypted and sent, and only then does our close_notify go out (`shutdown()`), then the FIN.
"""
from __future__ import annotations

import ssl
from typing import Any


class TlsSession:
    """One side of one TLS connection (the server's by default), with no socket of its own."""

    __slots__ = ("_obj", "_incoming", "_outgoing", "ready", "_pending", "pending", "closed_by_peer",
                 "_shut", "hold", "shutdown_due")

    def __init__(self, context: ssl.SSLContext, server_side: bool = True,
                 server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        self.ready = False                  # the handshake is done
        self._pending: list[bytes] = []     # plaintext sent before the handshake finished
        self.pending = 0                    # its size in bytes
        self.closed_by_peer = False         # the peer sent close_notify
        self._shut = False
        self.hold: Any = None               # weakref to a filesend.SendQueue holding plaintext back
        self.shutdown_due = False           # close_notify asked for while held: sent after it

    def start(self) -> bytes:
        """The client's first flight (ClientHello): the records to send once connected."""
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self._outgoing.read()

    def feed(self, data: Any) -> bytes:
        """Decrypt received bytes; returns the plaintext now available (maybe b"").
        Raises ssl.SSLError on anything that is not valid TLS."""
        self._incoming.write(data)
        if not self.ready:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.ready = True
            pending, self._pending, self.pending = self._pending, [], 0
            for chunk in pending:
                self._obj.write(chunk)
        chunks = []
        while not self.closed_by_peer:
            try:
                chunk = self._obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:                   # b"" (or ZeroReturn): the peer sent close_notify
                self.closed_by_peer = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def encrypt(self, data: Any) -> bytes:
        """Encrypt plaintext; returns the records to send now (b"" while the handshake runs:
        the plaintext waits for it)."""
        if self._shut:
            return b""
        if self.hold is not None:           # a file is queued: plaintext waits its turn
            queue = self.hold()
            if queue is not None:
                queue.hold(data)
                return b""
            self.hold = None
        if not self.ready:
            chunk = bytes(data)
            self._pending.append(chunk)
            self.pending += len(chunk)
            return self._outgoing.read()
        self._obj.write(data)
        return self._outgoing.read()

    def encrypt_now(self, data: Any) -> bytes:
        """Encrypt plaintext whose turn has come (filesend.py, after the handshake)."""
        self._obj.write(data)
        return self._outgoing.read()

    def take_output(self) -> bytes:
        """Everything the TLS engine has to send right now."""
        return self._outgoing.read()

    def shutdown(self) -> bytes:
        """Our close_notify (after everything encrypted so far); b"" when it cannot be sent."""
        if self._shut:
            return b""
        if self.hold is not None and self.hold() is not None:
            self.shutdown_due = True        # after the queued file and what follows it
            return b""
        self._shut = True
        if self.ready:
            try:
                self._obj.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError, OSError):
                pass    # unwrap waits for the peer's close_notify: ours is in the BIO already
        return self._outgoing.read()
