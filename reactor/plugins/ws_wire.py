"""The WebSocket wire, for reactor.plugins.websocket: HTTP request/response types for the
upgrade, permessage-deflate (RFC 7692) negotiation and state, frame building, close codes, the
per-connection state, and the incremental UTF-8 check.  No I/O here: the protocol drives it."""
from __future__ import annotations

import codecs
import logging
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any


from .. import PeerTimeout

if TYPE_CHECKING:

    from ..connection import Connection


log = logging.getLogger("reactor.websocket")

MAX_REQUEST_HEAD = 16384        # bytes of HTTP request line + headers accepted before the upgrade
PHASE_HANDSHAKE, PHASE_OPEN, PHASE_CLOSED = 0, 1, 2
FAST_TEXT, FAST_BINARY = 0x81, 0x82   # FIN set, no RSV bits, text / binary opcode
DEFLATE_TAIL = b"\x00\x00\xff\xff"             # the empty stored block RFC 7692 strips from each message
NEED_MORE, NEXT_FRAME = 0, 1                      # _step results: wait for bytes / made progress

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

# close codes a peer may send (RFC 6455 7.4, IANA registry); 1005, 1006 and 1015 are local-only
VALID_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)))
Utf8Decoder = codecs.getincrementaldecoder("utf-8")


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


class _Deflate:
    """permessage-deflate parameters agreed for one connection, and its zlib streams.

    in_*: what the client sends (we inflate), out_*: what we send (we deflate).  A stream is
    created on first use and dropped after each message when its side has no context takeover.
    """

    __slots__ = ("compressor", "in_bits", "in_reset", "inflater", "out_bits", "out_reset", "response")

    def __init__(self, response: str, in_bits: int, in_reset: bool, out_bits: int, out_reset: bool) -> None:
        self.response = response        # the Sec-WebSocket-Extensions value we answered
        self.in_bits = in_bits
        self.in_reset = in_reset
        self.out_bits = out_bits
        self.out_reset = out_reset
        self.inflater: Any = None
        self.compressor: Any = None

    def compress(self, payload: Any) -> memoryview:
        """One message's compressed payload (sync-flushed, without the trailing empty block)."""
        comp = self.compressor
        if comp is None:
            comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.out_bits)
        out = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
        self.compressor = None if self.out_reset else comp
        return memoryview(out)[:-4]


_WINDOW_BITS = {str(bits): bits for bits in range(8, 16)}    # exactly "8".."15" (RFC 7692 7.1.2)


def _deflate_offer(offer: str) -> dict[str, Any] | None:
    """The parameters of one permessage-deflate offer, or None when this offer must be
    declined (another extension, an unknown or repeated parameter, a bad value)."""
    name, *params = (part.strip() for part in offer.split(";"))
    if name != "permessage-deflate":
        return None
    out: dict[str, Any] = {}
    for param in params:
        key, eq, value = (s.strip() for s in param.partition("="))
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]                   # a quoted-string value (RFC 7692 7.1)
        if key in out:
            return None
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if eq:
                return None
            out[key] = True
        elif key == "server_max_window_bits":
            if value not in _WINDOW_BITS:
                return None
            out[key] = _WINDOW_BITS[value]
        elif key == "client_max_window_bits":
            if not eq:
                out[key] = True                   # "I can limit my window if you ask"
            elif value in _WINDOW_BITS:
                out[key] = _WINDOW_BITS[value]
            else:
                return None
        else:
            return None
    return out


def negotiate_deflate(offers: Iterable[str]) -> _Deflate | None:
    """Accept the first acceptable permessage-deflate offer (RFC 7692 5, 7.1), or None.

    The server honours every parameter the client asks for: no context takeover on either
    side, and window sizes (a server window of 8 bits cannot be produced by zlib, so such an
    offer is declined, as the RFC allows).  The client's window is not restricted beyond
    what the client itself proposed.
    """
    for offer in offers:
        params = _deflate_offer(offer)
        if params is None:
            continue
        server_bits = params.get("server_max_window_bits")
        if server_bits == 8:
            continue
        client_bits = params.get("client_max_window_bits")
        response = ["permessage-deflate"]
        if params.get("server_no_context_takeover"):
            response.append("server_no_context_takeover")
        if params.get("client_no_context_takeover"):
            response.append("client_no_context_takeover")
        if server_bits is not None:
            response.append(f"server_max_window_bits={server_bits}")
        if type(client_bits) is int:
            response.append(f"client_max_window_bits={client_bits}")
        return _Deflate("; ".join(response),
                        in_bits=client_bits if type(client_bits) is int else 15,
                        in_reset=bool(params.get("client_no_context_takeover")),
                        out_bits=server_bits or 15,
                        out_reset=bool(params.get("server_no_context_takeover")))
    return None


class Deadline:
    """The handshake deadline of one connection.  Holds the connection only until cancelled,
    so a cancelled timer waiting in the loop's heap keeps nothing alive."""

    __slots__ = ("conn", "timer")

    def __init__(self, conn: Connection, delay: float) -> None:
        self.conn: Connection | None = conn
        self.timer = conn.loop.run_after(delay, self._expire, delay)

    def cancel(self) -> None:
        self.conn = None
        self.timer.cancel()

    def _expire(self, delay: float) -> None:
        conn, self.conn = self.conn, None
        if conn is None or not conn.connected:
            return
        st = conn.protocol_state
        if st is None or st.phase != PHASE_HANDSHAKE:
            return
        message = f"websocket upgrade not finished within {delay:g} s"
        log.info("closing %r: %s", conn, message)
        conn.close(PeerTimeout(message, reason="handshake_timeout"))


class WebSocketState:
    """Per-connection WebSocket state, kept in `conn.protocol_state`.

    Public, read-only for handlers: `open` (upgrade done, not closing), `request` (the upgrade
    HttpRequest), `subprotocol` (the one chosen, or None), `compressed` (permessage-deflate
    agreed) and `extensions` (the Sec-WebSocket-Extensions answer, or None).
    """

    __slots__ = (
        "closing",
        "deadline",
        "deflate",
        "early",
        "fin",
        "frames",
        "in_size",
        "left",
        "mask",
        "msg",
        "msg_deflate",
        "msg_op",
        "phase",
        "request",
        "scanned",
        "subprotocol",
        "utf8",
    )

    def __init__(self) -> None:
        self.phase = PHASE_HANDSHAKE
        self.request: HttpRequest | None = None
        self.subprotocol: str | None = None
        self.deflate: _Deflate | None = None      # permessage-deflate, when agreed
        self.deadline: Deadline | None = None    # handshake deadline, until the upgrade
        self.scanned = 0                          # head bytes already searched for its end
        self.closing: tuple[int | None, str, bool] | None = None  # (code, reason, is_error)
        self.early: list[bytes] | None = None     # frames sent before the upgrade completed
        # the data frame being received (streaming parser)
        self.left = 0                             # its payload bytes not received yet
        self.mask = b""                           # its mask, rotated to the next payload byte
        self.fin = False
        # the message being received, across its frames
        self.msg_op = 0                           # 0: none; 1 text, 2 binary
        self.msg: bytearray | None = None         # its (inflated) bytes so far
        self.msg_deflate = False                  # compressed (RSV1 on its first frame)
        self.frames = 0                           # its frames so far
        self.in_size = 0                          # its payload bytes on the wire (compressed)
        self.utf8: Any = None                     # incremental UTF-8 check for a text message

    @property
    def open(self) -> bool:
        return self.phase == PHASE_OPEN and self.closing is None

    @property
    def compressed(self) -> bool:
        return self.deflate is not None

    @property
    def extensions(self) -> str | None:
        return self.deflate.response if self.deflate is not None else None

    def end_message(self) -> None:
        self.msg_op = 0
        self.msg = None
        self.utf8 = None
        self.frames = 0
        self.in_size = 0


def build_frame(opcode_byte: int, payload: Any) -> bytes:
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
    return build_frame(0x88, code.to_bytes(2, "big") + reason.encode("utf-8")[:123])


def unmask_python(payload: memoryview, mask: memoryview) -> bytes:
    """XOR `payload` with the repeating 4-byte client mask (one big-int XOR, no Python loop)."""
    n = len(payload)
    if n == 0:
        return b""
    key = (bytes(mask) * ((n + 3) >> 2))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


unmask: Callable[[Any, Any], bytes] = unmask_python
try:    # the `websockets` package ships a C unmasking routine, ~4x faster; same bytes out
    from websockets.speedups import apply_mask as unmask  # noqa: F401 (websocket.py uses it)
except ImportError:  # pragma: no cover - depends on what is installed
    pass


def parse_head(head: bytes) -> HttpRequest | None:
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


def utf8_check(st: WebSocketState, data: Any, final: bool = False) -> str | None:
    """Feed a text message's bytes to its incremental decoder; the error, or None when the
    bytes so far can still begin valid UTF-8."""
    dec = st.utf8
    try:
        dec.decode(data, final)
    except UnicodeDecodeError as exc:
        return exc.reason
    pending = dec.getstate()[0]
    # CPython waits for a third byte before refusing ED A0..BF (a UTF-16 surrogate): refuse now
    if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
        return "a surrogate code point"
    return None
