"""WebSocket (RFC 6455) server protocol, with permessage-deflate (RFC 7692) and a fast path
for plain frames.

`Server(handler, protocol=WebSocketProtocol())`: the protocol answers the HTTP upgrade, pings
and close frames itself and hands `on_message` one whole message: `str` for text, `bytes` for
binary (ctx is None).  Returning or sending `str` sends a text frame, bytes-like a binary one.

Options (all keyword, see `WebSocketProtocol`):

- `max_message_size: int = 1 << 20` - a message over this many bytes (after reassembly and
  inflation) is refused with close code 1009, as soon as that is known: from a frame header, or
  while inflating (never more than this much is inflated).
- `max_fragments: int = 1024` - frames one message may span; the next one closes with 1009.
- `subprotocols: Iterable[str] = ()`, `on_request: RequestHook | None = None` - see below.
- `compression: bool = False` - accept permessage-deflate when the client offers it.
- `handshake_timeout: float | None = 10.0` - seconds from the TCP accept for the upgrade to
  complete; past it the connection is closed.  None: no deadline.

How the work is split: wsproto validates the HTTP upgrade request and builds the 101 response.
Frames are parsed here: a complete, final, uncompressed text or binary frame (nearly every
message in practice) is unmasked in one call and handed over; everything else (fragments,
frames that arrive in pieces, compressed messages, control frames) goes through a streaming
parser that consumes payload bytes as they arrive, so memory and work follow the bytes
received: a message is accumulated in one bytearray, text is checked with an incremental UTF-8
decoder (1007 as soon as the bytes cannot be valid UTF-8, even in the middle of a frame), and
compressed data is inflated chunk by chunk with zlib's `max_length` bound.

Closing: a protocol violation closes with 1002, invalid UTF-8 or undecodable compressed data
with 1007, a message too big (or in too many fragments) with 1009; messages that arrived whole
before the bad frame are still delivered.  When the server closes an open WebSocket itself
(`conn.close()`, idle timeout, `server.stop()`), the `closing` hook sends a close frame first:
1000, or 1001 "going away" for `server.stop()`.

Note: `Handler.on_connect` runs when the TCP connection is accepted, before the upgrade; use
`on_request` to see the upgrade request.  Plain HTTP requests (no `Upgrade: websocket`) are
offered to `on_request` too, which may answer them (e.g. serve a page) with an HttpResponse.
A request head over MAX_REQUEST_HEAD bytes is answered with 431, a malformed one with 400.
"""
from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

try:
    from wsproto.connection import ConnectionType
    from wsproto.events import AcceptConnection
    from wsproto.events import Request as WsRequest
    from wsproto.handshake import H11Handshake
    from wsproto.utilities import RemoteProtocolError
except ImportError:
    from ..extras import missing
    raise missing("wsproto", "reactor.plugins.websocket") from None

from .. import Protocol, ProtocolError

from .ws_wire import (
    PHASE_CLOSED,
    FAST_BINARY,
    FAST_TEXT,
    PHASE_HANDSHAKE,
    NEED_MORE,
    NEXT_FRAME,
    PHASE_OPEN,
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    HttpRequest,
    HttpResponse,
    MAX_REQUEST_HEAD,
    RequestHook,
    WebSocketState,
    Deadline,
    DEFLATE_TAIL,
    Utf8Decoder,
    VALID_CLOSE_CODES,
    build_frame,
    parse_head,
    unmask,
    utf8_check,
    close_frame,
    negotiate_deflate,
)

if TYPE_CHECKING:
    from ringbuf import BufferReader

    from ..connection import Connection

__all__ = ["HttpRequest", "HttpResponse", "WebSocketProtocol", "WebSocketState"]

log = logging.getLogger("reactor.websocket")

class WebSocketProtocol(Protocol):
    """Server side of RFC 6455 (optionally with RFC 7692 permessage-deflate), one whole message
    per `on_message`.

    `max_message_size: int = 1 << 20`: a message (after reassembly and inflation) over this many
    bytes is refused with close code 1009 as soon as its size is known; at most this much is
    ever inflated.  `max_fragments: int = 1024`: frames one message may span (empty ones too);
    one more closes with 1009, the code for "a message this server will not take" (1008 would
    say a policy was broken; the remedy, fewer and bigger frames, is the one 1009 asks for).
    `subprotocols: Iterable[str] = ()`: the ones this server speaks; the first the client offers
    that is in this list is chosen.  `on_request: RequestHook | None = None`: called as
    `on_request(conn, request)` with every HttpRequest; return None to accept an upgrade, or an
    int status / HttpResponse to reject it (for plain requests: the response to send, None
    meaning 426).  `compression: bool = False`: accept permessage-deflate when the client
    offers it, with every parameter of RFC 7692 (context takeover and window sizes).
    `handshake_timeout: float | None = 10.0`: seconds from the TCP accept within which the
    upgrade must complete; then the connection is closed (a PeerTimeout with reason
    "handshake_timeout").  None disables the deadline.
    """

    def __init__(self, max_message_size: int = 1 << 20, subprotocols: Iterable[str] = (),
                 on_request: RequestHook | None = None, compression: bool = False, *,
                 max_fragments: int = 1024, handshake_timeout: float | None = 10.0) -> None:
        if max_message_size <= 0:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        if max_fragments <= 0:
            raise ValueError(f"max_fragments must be positive, got {max_fragments}")
        if handshake_timeout is not None and not handshake_timeout > 0:
            raise ValueError(f"handshake_timeout must be positive or None, got {handshake_timeout}")
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self.subprotocols = tuple(subprotocols)
        self.on_request = on_request
        self.compression = compression
        self.handshake_timeout = handshake_timeout
        # a request head (or a frame header) and one read may wait in the buffer; kept large
        # for connections whose reading is paused with messages still buffered
        self.max_pending = max(Protocol.max_pending, max_message_size + MAX_REQUEST_HEAD + 64)

    # -- connection lifecycle ---------------------------------------------------------------
    def connection_made(self, conn: Connection) -> None:
        st = conn.protocol_state = WebSocketState()
        if self.handshake_timeout is not None:
            st.deadline = Deadline(conn, self.handshake_timeout)

    def connection_lost(self, conn: Connection, error: BaseException | None) -> None:
        st = conn.protocol_state
        if st is not None:
            st.phase = PHASE_CLOSED
            if st.deadline is not None:
                st.deadline.cancel()
                st.deadline = None
            st.deflate = None
            st.early = None
            st.end_message()

    def closing(self, conn: Connection, reason: str) -> None:
        """The server is closing an open connection (reason "local", "idle", "stop", ...):
        say goodbye with a close frame, 1001 for a server stop, else 1000.  Before the upgrade
        completed nothing is sent (no request was answered yet, or it is being answered)."""
        st: WebSocketState | None = conn.protocol_state
        if st is None or st.phase != PHASE_OPEN:
            return
        st.phase = PHASE_CLOSED
        st.end_message()
        if reason == "stop":
            frame = close_frame(CLOSE_GOING_AWAY, "server stopping")
        else:
            frame = close_frame(CLOSE_NORMAL)
        try:
            conn.send_raw(frame)
        except ConnectionError:
            pass

    # -- input ------------------------------------------------------------------------------
    def unpacket(self, conn: Connection, buffer: BufferReader) -> tuple[Any, Any] | None:
        """Return (None, str | bytes) for each whole message; None when more bytes are needed."""
        st: WebSocketState = conn.protocol_state
        if st.phase != PHASE_OPEN:
            if st.phase == PHASE_CLOSED:
                buffer.retrieve_all()
                return None
            if not self._handshake(conn, st, buffer):
                return None
        limit = self.max_message_size
        while True:
            if st.closing is not None:
                self._finish(conn, st, buffer)
                return None
            if not st.msg_op:           # no message under way: try the one-call path
                size = len(buffer)
                if size < 2:
                    return None
                view = buffer.peek_all()
                b0 = view[0]
                n = view[1]
                if n & 0x80 and (b0 == FAST_TEXT or b0 == FAST_BINARY):
                    n &= 0x7F
                    if n < 126:
                        start = 6
                    elif n == 126:
                        if size < 8:
                            return None
                        n = int.from_bytes(view[2:4], "big")
                        start = 8 if n >= 126 else 0              # non-minimal: _step refuses it
                    else:
                        if size < 14:
                            return None
                        n = int.from_bytes(view[2:10], "big")
                        start = 14 if 65536 <= n < 1 << 63 else 0
                    end = start + n
                    if start and n <= limit and end <= size:
                        data = unmask(view[start:end], view[start - 4:start])
                        buffer.retrieve(end)
                        if b0 == FAST_BINARY:
                            return None, data
                        try:
                            return None, data.decode("utf-8")
                        except UnicodeDecodeError as exc:
                            self._fail(st, CLOSE_INVALID_DATA, f"invalid UTF-8 in a text message: "
                                                               f"{exc.reason}")
                            continue
                    del view
            result = self._step(conn, st, buffer)
            if result is NEED_MORE:
                return None
            if result is not NEXT_FRAME:
                return None, result

    def _fail(self, st: WebSocketState, code: int, reason: str) -> int:
        st.closing = (code, reason, True)
        st.end_message()
        st.left = 0
        return NEXT_FRAME

    def _step(self, conn: Connection, st: WebSocketState, buffer: BufferReader) -> Any:
        """Streaming parser: consume one frame header, one control frame or the payload bytes
        at hand.  Returns NEED_MORE (more bytes needed), NEXT_FRAME (progress; call again) or a whole
        message (str | bytes)."""
        if st.left:
            take = min(len(buffer), st.left)
            if not take:
                return NEED_MORE
            chunk = unmask(buffer.peek(take), st.mask)
            buffer.retrieve(take)
            st.left -= take
            if take & 3:
                st.mask = st.mask[take & 3:] + st.mask[:take & 3]
            if not self._data(st, chunk):
                return NEXT_FRAME
            return self._frame_done(st) if not st.left else NEXT_FRAME
        size = len(buffer)
        if size < 2:
            return NEED_MORE
        view = buffer.peek(14)
        b0 = view[0]
        b1 = view[1]
        opcode = b0 & 0x0F
        n = b1 & 0x7F
        hlen = 2
        if n == 126:
            if size < 4:
                return NEED_MORE
            hlen = 4
            n = int.from_bytes(view[2:4], "big")
            if n < 126:
                return self._fail(st, CLOSE_PROTOCOL_ERROR, "non-minimal payload length")
        elif n == 127:
            if size < 10:
                return NEED_MORE
            hlen = 10
            n = int.from_bytes(view[2:10], "big")
            if n < 65536 or n >> 63:
                return self._fail(st, CLOSE_PROTOCOL_ERROR, "non-minimal or invalid payload length")
        if not b1 & 0x80:
            return self._fail(st, CLOSE_PROTOCOL_ERROR, "unmasked client frame")
        if b0 & 0x30 or b0 & 0x40 and (st.deflate is None or opcode not in (1, 2)):
            return self._fail(st, CLOSE_PROTOCOL_ERROR, "reserved bits set")
        if opcode >= 8:
            if opcode > 10:
                return self._fail(st, CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
            if not b0 & 0x80:
                return self._fail(st, CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if n > 125:
                return self._fail(st, CLOSE_PROTOCOL_ERROR, "control frame payload over 125 bytes")
            end = hlen + 4 + n
            if size < end:
                return NEED_MORE                      # a control frame is taken whole (<= 131 bytes)
            view = buffer.peek(end)
            payload = unmask(view[hlen + 4:end], view[hlen:hlen + 4])
            del view
            buffer.retrieve(end)
            self._control(conn, st, opcode, payload)
            return NEXT_FRAME
        if size < hlen + 4:
            return NEED_MORE                          # the mask has not arrived yet
        if opcode == 0:
            if not st.msg_op:
                return self._fail(st, CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
            st.frames += 1
            if st.frames > self.max_fragments:
                return self._fail(st, CLOSE_TOO_BIG, f"message in over {self.max_fragments} frames")
        elif opcode <= 2:
            if st.msg_op:
                return self._fail(st, CLOSE_PROTOCOL_ERROR, "new message inside a fragmented message")
            st.msg_op = opcode
            st.msg = bytearray()
            st.frames = 1
            st.in_size = 0
            st.msg_deflate = bool(b0 & 0x40)
            st.utf8 = Utf8Decoder() if opcode == 1 else None
            if st.msg_deflate:
                assert st.deflate is not None
                if st.deflate.inflater is None:
                    st.deflate.inflater = zlib.decompressobj(-st.deflate.in_bits)
        else:
            return self._fail(st, CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        assert st.msg is not None
        limit = self.max_message_size
        st.in_size += n
        if st.msg_deflate:
            # the wire size of a compressed message is bounded too (deflate barely grows
            # incompressible data; this only stops a stream of empty blocks)
            if st.in_size > 2 * limit + 4096:
                return self._fail(st, CLOSE_TOO_BIG, f"compressed message of over {2 * limit + 4096} bytes")
        elif st.in_size > limit:
            return self._fail(st, CLOSE_TOO_BIG, f"message of over {limit} bytes")
        st.mask = bytes(view[hlen:hlen + 4])
        del view
        buffer.retrieve(hlen + 4)
        st.fin = bool(b0 & 0x80)
        st.left = n
        return NEXT_FRAME if n else self._frame_done(st)

    def _data(self, st: WebSocketState, chunk: Any) -> bool:
        """Payload bytes of the message under way: inflate (bounded), check UTF-8, keep."""
        msg = st.msg
        assert msg is not None
        if st.msg_deflate:
            assert st.deflate is not None
            room = self.max_message_size - len(msg)
            try:
                chunk = st.deflate.inflater.decompress(chunk, room + 1)
            except zlib.error as exc:
                self._fail(st, CLOSE_INVALID_DATA, f"invalid compressed data: {exc}")
                return False
            if len(chunk) > room:
                self._fail(st, CLOSE_TOO_BIG, f"message of over {self.max_message_size} bytes")
                return False
        if st.utf8 is not None and chunk:
            error = utf8_check(st, chunk)
            if error is not None:
                self._fail(st, CLOSE_INVALID_DATA, f"invalid UTF-8 in a text message: {error}")
                return False
        msg += chunk
        return True

    def _frame_done(self, st: WebSocketState) -> Any:
        """A data frame's payload is complete; the message, when that was its last frame."""
        if not st.fin:
            return NEXT_FRAME
        msg = st.msg
        assert msg is not None
        if st.msg_deflate:
            deflate = st.deflate
            assert deflate is not None
            if not self._data(st, DEFLATE_TAIL):
                return NEXT_FRAME
            inflater = deflate.inflater
            if inflater.eof:                      # the sender ended its stream (BFINAL)
                if inflater.unused_data not in (b"", DEFLATE_TAIL):
                    return self._fail(st, CLOSE_INVALID_DATA, "data after the end of the compressed stream")
                deflate.inflater = None
            elif deflate.in_reset:
                deflate.inflater = None
        if st.utf8 is not None:
            error = utf8_check(st, b"", True)
            if error is not None:
                return self._fail(st, CLOSE_INVALID_DATA, f"invalid UTF-8 in a text message: {error}")
            data: Any = msg.decode("utf-8")
        else:
            data = bytes(msg)
        st.end_message()
        return data

    def _control(self, conn: Connection, st: WebSocketState, opcode: int, payload: bytes) -> None:
        """Ping: pong.  Pong: nothing.  Close: echo the peer's code, then close."""
        if opcode == 9:
            conn.send_raw(build_frame(0x8A, payload))
        elif opcode == 8:
            if not payload:
                st.closing = (None, "", False)
                return
            code = int.from_bytes(payload[:2], "big")
            if len(payload) < 2 or code not in VALID_CLOSE_CODES:
                self._fail(st, CLOSE_PROTOCOL_ERROR, "invalid close frame")
                return
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(st, CLOSE_INVALID_DATA, "invalid UTF-8 in the close reason")
                return
            st.closing = (code, "", False)

    def _finish(self, conn: Connection, st: WebSocketState, buffer: BufferReader) -> None:
        """Send the close frame decided on, then close (or fail) the connection."""
        assert st.closing is not None
        code, reason, is_error = st.closing
        st.phase = PHASE_CLOSED
        st.end_message()
        buffer.retrieve_all()
        try:
            conn.send_raw(close_frame(code, reason))
        except ConnectionError:
            return
        if is_error:
            raise ProtocolError(f"websocket closed with {code}: {reason}")
        conn.close()

    # -- handshake --------------------------------------------------------------------------
    def _handshake(self, conn: Connection, st: WebSocketState, buffer: BufferReader) -> bool:
        """Answer the HTTP request once its head is buffered; True when the upgrade is done."""
        window = buffer.peek(MAX_REQUEST_HEAD + 4)
        start = max(0, st.scanned - 3)            # only bytes not searched before (and 3 back)
        found = bytes(window[start:]).find(b"\r\n\r\n")
        st.scanned = len(window)
        if found < 0:
            del window
            if len(buffer) > MAX_REQUEST_HEAD:
                self._respond(conn, st, buffer, HttpResponse(431))
                raise ProtocolError(f"HTTP request head over {MAX_REQUEST_HEAD} bytes")
            return False
        end = start + found
        head = bytes(window[:end + 4])
        del window
        request = parse_head(head[:end])
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
            handshake.receive_data(head)
            events = list(handshake.events())
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            status = getattr(hint, "status_code", 400)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in getattr(hint, "headers", [])]
            self._respond(conn, st, buffer, HttpResponse(status, str(exc), headers))
            raise ProtocolError(f"bad WebSocket upgrade: {exc}") from None
        except UnicodeError as exc:               # non-ASCII (or bad IDNA) in a header wsproto decodes
            self._respond(conn, st, buffer, HttpResponse(400, "Bad Request"))
            raise ProtocolError(f"bad WebSocket upgrade: undecodable header: {exc}") from None
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
        deflate = negotiate_deflate(cast("list[str]", ws_request.extensions)) if self.compression else None
        extra = [(b"Sec-WebSocket-Extensions", deflate.response.encode("ascii"))] if deflate else []
        response = handshake.send(AcceptConnection(subprotocol=chosen, extra_headers=extra))
        buffer.retrieve(end + 4)
        self._upgraded(st)
        st.request = request
        st.subprotocol = chosen
        st.deflate = deflate
        early, st.early = st.early, None
        conn.send_raw(response + b"".join(early) if early else response)
        return True

    def _upgraded(self, st: WebSocketState, phase: int = PHASE_OPEN) -> None:
        st.phase = phase
        if st.deadline is not None:
            st.deadline.cancel()
            st.deadline = None

    def _respond(self, conn: Connection, st: WebSocketState, buffer: BufferReader,
                 response: HttpResponse | int) -> None:
        """Send a plain HTTP response (an int is a bare status) and stop reading the stream."""
        if isinstance(response, int):
            response = HttpResponse(response)
        self._upgraded(st, PHASE_CLOSED)
        buffer.retrieve_all()
        conn.send_raw(response.to_bytes())

    # -- output -----------------------------------------------------------------------------
    def pending_output(self, conn: Connection) -> int:
        """Frames sent before the upgrade completed, held until its response goes out."""
        st: WebSocketState | None = conn.protocol_state
        return sum(map(len, st.early)) if st is not None and st.early else 0

    def packet(self, conn: Connection, data: Any) -> Any:
        """A text frame for str, a binary frame for bytes-like data (compressed when
        negotiated).  Frames sent before the upgrade completes follow its response; after the
        close frame nothing more is sent."""
        st: WebSocketState | None = conn.protocol_state
        text = type(data) is str
        if st is None or st.phase == PHASE_CLOSED or st.closing is not None:
            log.debug("dropping a message sent on a closing WebSocket %r", conn)
            return b""
        deflate = st.deflate
        if deflate is not None:
            payload = deflate.compress(data.encode("utf-8") if text else data)
            frame = build_frame(0xC1 if text else 0xC2, payload)
        else:
            frame = build_frame(0x81, data.encode("utf-8")) if text else build_frame(0x82, data)
        if st.phase == PHASE_HANDSHAKE:
            if st.early is None:
                st.early = []
            st.early.append(frame)
            return b""
        return frame
