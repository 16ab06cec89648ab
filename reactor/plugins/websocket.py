"""WebSocket (RFC 6455) server protocol on wsproto, with a fast path for plain frames.

`Server(handler, protocol=WebSocketProtocol())`: the protocol answers the HTTP upgrade, pings
and close frames itself and hands `on_message` one whole message: `str` for text, `bytes` for
binary (ctx is None).  Returning or sending `str` sends a text frame, bytes-like a binary one.

How the work is split: the handshake, control frames, fragmented and compressed messages go
through wsproto (its H11Handshake and frame Connection).  A complete, final, unfragmented,
uncompressed data frame - nearly every message in practice - is parsed here directly, which
is several times cheaper than wsproto's per-frame path.  wsproto is only ever fed whole frames
(or the rest of the frame it has begun), so both parsers always agree on where frames start.

Note: `Handler.on_connect` runs when the TCP connection is accepted, before the upgrade; use
`on_request` to see the upgrade request.  Plain HTTP requests (no `Upgrade: websocket`) are
offered to `on_request` too, which may answer them (e.g. serve a page) with an HttpResponse.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.events import Request as WsRequest
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from ..protocol import Protocol, ProtocolError

if TYPE_CHECKING:
    from ringbuf import BufferReader

    from ..connection import Connection

__all__ = ["HttpRequest", "HttpResponse", "WebSocketProtocol", "WebSocketState"]

log = logging.getLogger("reactor.websocket")

MAX_REQUEST_HEAD = 16384        # bytes of HTTP request line + headers accepted before the upgrade
_COMPRESSED_FEED = 1024         # compressed bytes handed to wsproto at once: bounds inflated output
_HANDSHAKE, _OPEN, _CLOSED = 0, 1, 2
_FAST_TEXT, _FAST_BINARY = 0x81, 0x82   # FIN set, no RSV bits, text / binary opcode

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009


@dataclass
class HttpRequest:
    """The HTTP request that opened a connection (upgrade or not), as given to `on_request`."""

    method: str
    target: str
    headers: list[tuple[str, str]]          # (lower-case name, value)
    subprotocols: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (case-insensitive), or `default`."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default

    @property
    def is_websocket(self) -> bool:
        """True when the request asks for a WebSocket upgrade."""
        return any(k == "upgrade" and v.strip().lower() == "websocket" for k, v in self.headers)


@dataclass
class HttpResponse:
    """A plain HTTP response: `on_request` returns one to reject an upgrade or answer a plain
    request.  The connection is closed once it is sent."""

    status: int
    body: bytes | str = b""
    headers: Sequence[tuple[str, str]] = ()
    content_type: str = "text/plain; charset=utf-8"

    def to_bytes(self) -> bytes:
        """The response on the wire (HTTP/1.1, Content-Length, Connection: close)."""
        body = self.body.encode("utf-8") if isinstance(self.body, str) else bytes(self.body)
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        names = {name.lower() for name, _ in self.headers}
        if "content-type" not in names and body:
            lines.append(f"Content-Type: {self.content_type}")
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


RequestHook = Callable[["Connection", HttpRequest], None | int | HttpResponse]


class WebSocketState:
    """Per-connection WebSocket state, kept in `conn.protocol_state`.

    Public, read-only for handlers: `open` (upgrade done, not closing), `request` (the upgrade
    HttpRequest) and `subprotocol` (the one chosen, or None).
    """

    __slots__ = (
        "closing",
        "compressed",
        "early",
        "messages",
        "partial",
        "partial_size",
        "partial_text",
        "phase",
        "request",
        "subprotocol",
        "ws",
        "ws_left",
    )

    def __init__(self) -> None:
        self.phase = _HANDSHAKE
        self.request: HttpRequest | None = None
        self.subprotocol: str | None = None
        self.ws: WsConnection | None = None       # wsproto frame layer, created when first needed
        self.compressed = False                   # permessage-deflate negotiated
        self.ws_left = 0                          # bytes of the frame wsproto has begun, not fed yet
        self.partial: list[Any] | None = None     # pieces of a message wsproto is reassembling
        self.partial_size = 0
        self.partial_text = False
        self.messages: deque[Any] = deque()       # whole messages waiting for on_message
        self.closing: tuple[int | None, str, bool] | None = None  # (code, reason, is_error)
        self.early: list[bytes] | None = None     # frames sent before the upgrade completed

    @property
    def open(self) -> bool:
        return self.phase == _OPEN and self.closing is None


def _frame(opcode_byte: int, payload: Any) -> bytes:
    """One unmasked server frame with the given first byte (FIN + opcode)."""
    n = payload.nbytes if type(payload) is memoryview else len(payload)
    if n < 126:
        head = bytes((opcode_byte, n))
    elif n < 65536:
        head = bytes((opcode_byte, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((opcode_byte, 127)) + n.to_bytes(8, "big")
    return b"".join((head, payload))


def close_frame(code: int | None = 1000, reason: str = "") -> bytes:
    """A server close frame; code None sends an empty payload (no status)."""
    if code is None:
        return b"\x88\x00"
    return _frame(0x88, code.to_bytes(2, "big") + reason.encode("utf-8")[:123])


def _unmask_int(payload: memoryview, mask: memoryview) -> bytes:
    """XOR `payload` with the repeating 4-byte client mask (one big-int XOR, no Python loop)."""
    n = len(payload)
    if n == 0:
        return b""
    key = (bytes(mask) * ((n + 3) >> 2))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


_unmask: Callable[[Any, Any], bytes] = _unmask_int
try:    # the `websockets` package ships a C unmasking routine, ~4x faster; same bytes out
    from websockets.speedups import apply_mask as _unmask
except ImportError:  # pragma: no cover - depends on what is installed
    pass


def _parse_head(head: bytes) -> HttpRequest | None:
    """Request line and headers of an HTTP/1.x request head (without the blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            return None
        headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
    return HttpRequest(parts[0].decode("latin-1"), parts[1].decode("latin-1"), headers)


class WebSocketProtocol(Protocol):
    """Server side of RFC 6455 (optionally with permessage-deflate), one whole message per
    `on_message`.

    `max_message_size`: a message (after reassembly and decompression) over this many bytes is
    refused with close code 1009, before it is buffered.  `subprotocols`: the ones this server
    speaks; the first the client offers that is in this list is chosen.  `on_request(conn,
    request)`: called with every HttpRequest; return None to accept an upgrade, or an int status
    / HttpResponse to reject it (for plain requests: the response to send, None meaning 426).
    `compression`: accept permessage-deflate when the client offers it.
    """

    def __init__(self, max_message_size: int = 1 << 20, subprotocols: Iterable[str] = (),
                 on_request: RequestHook | None = None, compression: bool = False) -> None:
        if max_message_size <= 0:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        self.max_message_size = max_message_size
        self.subprotocols = tuple(subprotocols)
        self.on_request = on_request
        self.compression = compression
        # one frame (header + max payload) or a request head may wait in the buffer
        self.max_pending = max(Protocol.max_pending, max_message_size + MAX_REQUEST_HEAD + 64)

    # -- connection lifecycle ---------------------------------------------------------------
    def connection_made(self, conn: Connection) -> None:
        conn.protocol_state = WebSocketState()

    def connection_lost(self, conn: Connection, error: BaseException | None) -> None:
        st = conn.protocol_state
        if st is not None:
            st.phase = _CLOSED
            st.ws = None
            st.messages.clear()

    # -- input ------------------------------------------------------------------------------
    def unpacket(self, conn: Connection, buffer: BufferReader) -> tuple[Any, Any] | None:
        """Return (None, str | bytes) for each whole message; None when more bytes are needed."""
        st: WebSocketState = conn.protocol_state
        if st.phase != _OPEN:
            if st.phase == _CLOSED:
                buffer.retrieve_all()
                return None
            if not self._handshake(conn, st, buffer):
                return None
        limit = self.max_message_size
        while True:
            if st.messages:
                return None, st.messages.popleft()
            if st.closing is not None:
                self._finish(conn, st, buffer)
                return None
            size = len(buffer)
            if size < 2:
                return None
            if st.ws_left or st.partial is not None:
                if not self._feed_wsproto(conn, st, buffer):
                    return None
                continue
            view = buffer.peek_all()
            b0 = view[0]
            n = view[1]
            if n & 0x80 and (b0 == _FAST_TEXT or b0 == _FAST_BINARY):
                n &= 0x7F
                if n < 126:
                    start = 6
                elif n == 126:
                    if size < 8:
                        return None
                    n = int.from_bytes(view[2:4], "big")
                    start = 8 if n >= 126 else 0              # non-minimal length: wsproto rejects
                else:
                    if size < 14:
                        return None
                    n = int.from_bytes(view[2:10], "big")
                    start = 14 if 65536 <= n < 1 << 63 else 0
                if start:
                    if n > limit:
                        st.closing = (CLOSE_TOO_BIG, f"message of {n} bytes exceeds {limit}", True)
                        continue
                    end = start + n
                    if size < end:
                        return None
                    data = _unmask(view[start:end], view[start - 4:start])
                    buffer.retrieve(end)
                    if b0 == _FAST_BINARY:
                        return None, data
                    try:
                        return None, data.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        st.closing = (CLOSE_INVALID_DATA, f"invalid UTF-8 in a text message: {exc.reason}",
                                      True)
                        continue
            if not self._feed_wsproto(conn, st, buffer):
                return None

    def _feed_wsproto(self, conn: Connection, st: WebSocketState, buffer: BufferReader) -> bool:
        """Give wsproto (part of) the next frame; False when it needs bytes not yet buffered."""
        if st.ws is None:
            st.ws = WsConnection(ConnectionType.SERVER)
        if not st.ws_left:
            total = self._frame_extent(st, buffer)
            if total == 0:
                return st.closing is not None     # True: a too-big frame was refused
            st.ws_left = total
        take = min(len(buffer), st.ws_left)
        if st.compressed and take > _COMPRESSED_FEED:
            take = _COMPRESSED_FEED
        if take == 0:
            return False
        data = buffer.read(take)
        st.ws_left -= take
        st.ws.receive_data(data)
        self._collect(conn, st)
        return True

    def _frame_extent(self, st: WebSocketState, buffer: BufferReader) -> int:
        """Bytes of the frame at the front of `buffer` to feed wsproto, 0 if its header is
        incomplete.  Headers wsproto will reject are fed alone, so it reports the error."""
        size = len(buffer)
        b0 = buffer.peek_uint(1, 0)
        b1 = buffer.peek_uint(1, 1)
        if b0 is None or b1 is None:
            return 0
        n = b1 & 0x7F
        hlen = 2
        if n == 126:
            hlen = 4
            if size < hlen:
                return 0
            n = buffer.peek_uint(2, 2) or 0
            if n < 126:
                return hlen
        elif n == 127:
            hlen = 10
            if size < hlen:
                return 0
            n = buffer.peek_uint(8, 2) or 0
            if n < 65536 or n >> 63:
                return hlen
        if not b1 & 0x80 or b0 & 0x70 and not st.compressed:
            return hlen                                   # unmasked / reserved bits: wsproto rejects
        # a data frame that cannot fit is refused before it is buffered; a compressed one may
        # be slightly bigger than its content (incompressible data), the exact check follows
        # inflation
        limit = self.max_message_size - st.partial_size
        if b0 & 0x40 and st.compressed:
            limit = 2 * limit + 4096
        if b0 & 0x0F < 3 and n > limit:
            st.closing = (CLOSE_TOO_BIG, f"message of over {self.max_message_size} bytes", True)
            return 0
        return hlen + 4 + n

    def _collect(self, conn: Connection, st: WebSocketState) -> None:
        """Turn wsproto's events into whole messages, pongs and close decisions."""
        assert st.ws is not None
        for event in st.ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                data = event.data
                if st.partial is None:
                    st.partial = []
                    st.partial_size = 0
                    st.partial_text = isinstance(event, TextMessage)
                st.partial.append(data)
                st.partial_size += len(data.encode("utf-8")) if isinstance(data, str) else len(data)
                if st.partial_size > self.max_message_size:
                    st.closing = (CLOSE_TOO_BIG, f"message of over {self.max_message_size} bytes", True)
                    return
                if event.message_finished:
                    joiner = "" if st.partial_text else b""
                    st.messages.append(joiner.join(st.partial))
                    st.partial = None
                    st.partial_size = 0
            elif isinstance(event, Ping):
                conn.send_raw(_frame(0x8A, event.payload))
            elif isinstance(event, CloseConnection):
                if st.ws.state is ConnectionState.REMOTE_CLOSING:      # the peer's close frame
                    code = None if event.code == 1005 else int(event.code)
                    st.closing = (code, "", False)
                else:                                                  # wsproto's ParseFailed
                    st.closing = (int(event.code), event.reason or "protocol error", True)
                return

    def _finish(self, conn: Connection, st: WebSocketState, buffer: BufferReader) -> None:
        """Send the close frame decided on, then close (or fail) the connection."""
        assert st.closing is not None
        code, reason, is_error = st.closing
        st.phase = _CLOSED
        buffer.retrieve_all()
        try:
            conn.send_raw(close_frame(code, reason))
        except ConnectionError:
            return
        if is_error:
            raise ProtocolError(f"websocket closed with {code}: {reason}")
        conn.close()
        return

    # -- handshake --------------------------------------------------------------------------
    def _handshake(self, conn: Connection, st: WebSocketState, buffer: BufferReader) -> bool:
        """Answer the HTTP request once its head is buffered; True when the upgrade is done."""
        head = bytes(buffer.peek(MAX_REQUEST_HEAD + 4))
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_REQUEST_HEAD:
                self._respond(conn, st, buffer, HttpResponse(431))
                raise ProtocolError(f"HTTP request head over {MAX_REQUEST_HEAD} bytes")
            return False
        request = _parse_head(head[:end])
        if request is None:
            self._respond(conn, st, buffer, HttpResponse(400, "Bad Request"))
            raise ProtocolError("malformed HTTP request")
        if not request.is_websocket:
            answer = self.on_request(conn, request) if self.on_request is not None else None
            if answer is None:
                answer = HttpResponse(426, "WebSocket upgrade required",
                                      [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")])
            self._respond(conn, st, buffer, answer)
            conn.close()
            return False
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.receive_data(head[:end + 4])
            events = list(handshake.events())
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            status = getattr(hint, "status_code", 400)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in getattr(hint, "headers", [])]
            self._respond(conn, st, buffer, HttpResponse(status, str(exc), headers))
            raise ProtocolError(f"bad WebSocket upgrade: {exc}") from None
        ws_request = next((e for e in events if isinstance(e, WsRequest)), None)
        if ws_request is None:
            self._respond(conn, st, buffer, HttpResponse(400, "Bad Request"))
            raise ProtocolError("bad WebSocket upgrade: incomplete request")
        request.subprotocols = list(ws_request.subprotocols)
        if self.on_request is not None:
            verdict = self.on_request(conn, request)
            if verdict is not None:
                self._respond(conn, st, buffer, verdict)
                conn.close()
                return False
        chosen = next((p for p in request.subprotocols if p in self.subprotocols), None)
        extensions: list[Extension] = [PerMessageDeflate()] if self.compression else []
        response = handshake.send(AcceptConnection(subprotocol=chosen, extensions=extensions))
        buffer.retrieve(end + 4)
        st.phase = _OPEN
        st.request = request
        st.subprotocol = chosen
        if extensions and extensions[0].enabled():
            st.compressed = True
            st.ws = handshake.connection
        early, st.early = st.early, None
        conn.send_raw(response + b"".join(early) if early else response)
        return True

    def _respond(self, conn: Connection, st: WebSocketState, buffer: BufferReader,
                 response: HttpResponse | int) -> None:
        """Send a plain HTTP response (an int is a bare status) and stop reading the stream."""
        if isinstance(response, int):
            response = HttpResponse(response)
        st.phase = _CLOSED
        buffer.retrieve_all()
        conn.send_raw(response.to_bytes())

    # -- output -----------------------------------------------------------------------------
    def packet(self, conn: Connection, data: Any) -> Any:
        """A text frame for str, a binary frame for bytes-like data (compressed when
        negotiated).  Frames sent before the upgrade completes follow its response; after the
        close frame nothing more is sent."""
        st: WebSocketState | None = conn.protocol_state
        text = type(data) is str
        if st is None or st.phase == _CLOSED or st.closing is not None:
            log.debug("dropping a message sent on a closing WebSocket %r", conn)
            return b""
        if st.compressed and st.ws is not None:
            event = TextMessage(data=data) if text else BytesMessage(data=bytes(data))
            frame = st.ws.send(event)
        else:
            frame = _frame(0x81, data.encode("utf-8")) if text else _frame(0x82, data)
        if st.phase == _HANDSHAKE:
            if st.early is None:
                st.early = []
            st.early.append(frame)
            return b""
        return frame
