"""The metrics exporter's HTTP side: one selector thread, bounded whatever the clients do.

At most `MAX_CONNECTIONS` open (past it a new one evicts the connection that has waited longest
for a request head, or is closed at once if none is waiting); a request head must arrive within
`HEAD_TIMEOUT` seconds and fit in `MAX_HEAD_BYTES` (else 408 / 431); a response must be taken
within `HEAD_TIMEOUT` too; after an error response the rest of a request is drained for at most
`LINGER_TIMEOUT` / `LINGER_BYTES`.  It knows HTTP/1.x and nothing of metrics: reactor.metrics
hands it the function that answers a request.
"""
from __future__ import annotations

import email.utils
import logging
import re
import selectors
import socket
import time
from collections.abc import Callable



log = logging.getLogger("reactor.metrics")


#: Seconds a connection has to send a whole request head (counted from accept, or from the end of
#: the previous response on a kept-alive connection) and, separately, to take a whole response.
HEAD_TIMEOUT = 10.0
#: Largest request head (request line and header lines) read; a longer one is answered 431.
MAX_HEAD_BYTES = 8192
#: Most connections open at once on the metrics port.
MAX_CONNECTIONS = 64
#: After an error response, how long the unread rest of a request is drained (so the client sees
#: the response rather than a reset) before the connection is closed anyway.
LINGER_TIMEOUT = 2.0
#: Bytes drained that way at most.
LINGER_BYTES = 64 << 10
#: How long accepting pauses when accept() fails for lack of descriptors (EMFILE and the like).
ACCEPT_PAUSE = 0.5

_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 505: "HTTP Version Not Supported"}
_ALLOW = "GET, HEAD, OPTIONS"
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class Request:
    __slots__ = ("method", "target", "version", "headers")

    def __init__(self, method: str, target: str, version: tuple[int, int], headers: dict[str, str]):
        self.method, self.target, self.version, self.headers = method, target, version, headers


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _find_head_end(buf: bytes | bytearray) -> tuple[int, int]:
    """(end of head, start of what follows) or (-1, -1); accepts bare LF line ends too."""
    crlf, lf = buf.find(b"\r\n\r\n"), buf.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def _parse_head(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\n")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version_text = parts
    version = _VERSION.fullmatch(version_text)
    if version is None:
        raise BadRequest(400, "malformed HTTP version")
    if version.group(1) != "1":
        raise BadRequest(505, f"{version_text} not supported")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        line = line.rstrip("\r")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):     # also rejects obsolete line folding
            raise BadRequest(400, "malformed header line")
        name, value = name.lower(), value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Request(method, target, (1, int(version.group(2))), headers)


def header_tokens(value: str) -> set[str]:
    return {t.split(";")[0].strip().lower() for t in value.split(",")}


class _Conn:
    """One client connection of `HttpServer`: reading a head, writing a response, or lingering."""

    __slots__ = ("sock", "state", "inbuf", "out", "deadline", "close_after", "drained", "events")

    HEAD, WRITE, LINGER = "head", "write", "linger"

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.state = self.HEAD
        self.inbuf = bytearray()
        self.out = memoryview(b"")
        self.deadline = deadline
        self.close_after = False
        self.drained = 0
        self.events = 0


Responder = Callable[[Request], "tuple[int, list[tuple[str, str]], bytes]"]


class HttpServer:
    """A single-threaded, selector-driven HTTP/1.1 server of bounded size (see the module doc).

    `run()` serves until `stop()` (thread-safe) and, on the way out, closes every descriptor it
    owns: the listening socket, each connection, the selector and its wake-up socket pair."""

    def __init__(self, listener: socket.socket, respond: Responder, *, head_timeout: float,
                 max_connections: int, max_head_bytes: int):
        self.listener = listener
        self.respond = respond
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self.max_head_bytes = max_head_bytes
        self.conns: dict[int, _Conn] = {}
        self._stopping = False
        self._accept_paused_until = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        self.selector = selectors.DefaultSelector()
        try:
            for s in (listener, self._wake_r, self._wake_w):
                s.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ)
            self.selector.register(self._wake_r, selectors.EVENT_READ)
        except BaseException:
            self.forget()
            raise

    # ---- control (any thread) ---------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def forget(self) -> None:
        """Close every descriptor without touching the (possibly shared) selector registrations:
        for a forked child, where the serving thread does not exist, and for a failed start."""
        for conn in list(self.conns.values()):
            conn.sock.close()
        self.conns.clear()
        for s in (self.listener, self._wake_r, self._wake_w):
            s.close()
        self.selector.close()

    # ---- the serving thread -----------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stopping:
                now = time.monotonic()
                self._expire(now)
                timeout = self._next_timeout(now)
                for key, mask in self.selector.select(timeout):
                    if self._stopping:
                        break
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        conn = self.conns.get(key.fd)
                        if conn is not None:
                            self._guarded(self._on_ready, conn, mask)
        except Exception:
            log.exception("metrics HTTP server failed; metrics are no longer served")
        finally:
            self._close_all()

    def _close_all(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        try:
            self.selector.unregister(self.listener)
        except (KeyError, ValueError):
            pass
        self.forget()

    def _next_timeout(self, now: float) -> float | None:
        deadlines = [conn.deadline for conn in self.conns.values()]
        if self._accept_paused_until:
            deadlines.append(self._accept_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _expire(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self.selector.register(self.listener, selectors.EVENT_READ)
        for conn in [c for c in self.conns.values() if c.deadline <= now]:
            if conn.state == _Conn.HEAD and conn.inbuf.strip():
                try:     # a partial head: say why, if the socket takes it at once, then hang up
                    conn.sock.send(self._response_bytes(408, [("Connection", "close")],
                                                        b"request head not received in time\n"))
                except OSError:
                    pass
            log.debug("metrics connection %s timed out (%s)", conn.sock.fileno(), conn.state)
            self._close(conn)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _accept(self) -> None:
        for _ in range(self.max_connections):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:        # out of descriptors or buffers: back off, do not spin
                log.warning("metrics accept failed (%s); pausing %.1fs", exc, ACCEPT_PAUSE)
                self.selector.unregister(self.listener)
                self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
                return
            if len(self.conns) >= self.max_connections and not self._evict_one():
                sock.close()              # every slot is busy answering: refuse this one at once
                continue
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.head_timeout)
            self.conns[sock.fileno()] = conn
            self._watch(conn, selectors.EVENT_READ)

    def _evict_one(self) -> bool:
        """Make room by closing the connection that has waited longest for a request head."""
        waiting = [c for c in self.conns.values() if c.state == _Conn.HEAD]
        if not waiting:
            return False
        self._close(min(waiting, key=lambda c: c.deadline))
        return True

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if conn.events:
            self.selector.modify(conn.sock, events)
        else:
            self.selector.register(conn.sock, events)
        conn.events = events

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self.conns.get(fd) is conn:
            del self.conns[fd]
        if conn.events:
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.events = 0
        conn.sock.close()

    def _guarded(self, fn: Callable[[_Conn, int], None], conn: _Conn, mask: int) -> None:
        try:
            fn(conn, mask)
        except OSError as exc:            # the peer went away: nothing to tell anyone
            log.debug("metrics connection closed: %s", exc)
            self._close(conn)
        except Exception:
            log.exception("metrics connection failed")
            self._close(conn)

    def _on_ready(self, conn: _Conn, mask: int) -> None:
        if conn.state == _Conn.HEAD:
            data = conn.sock.recv(4096)
            if not data:
                self._close(conn)
                return
            conn.inbuf += data
            self._serve_heads(conn)
        elif conn.state == _Conn.WRITE:
            self._flush(conn)
            if conn.state == _Conn.HEAD and conn.inbuf:    # a pipelined request already waiting
                self._serve_heads(conn)
        else:                             # LINGER: discard what the client still sends
            data = conn.sock.recv(4096)
            conn.drained += len(data)
            if not data or conn.drained >= LINGER_BYTES:
                self._close(conn)

    def _serve_heads(self, conn: _Conn) -> None:
        """Answer every complete head in the buffer (pipelining), one response at a time."""
        while conn.state == _Conn.HEAD:
            del conn.inbuf[:len(conn.inbuf) - len(conn.inbuf.lstrip(b"\r\n"))]  # RFC 9112 2.2
            end, rest = _find_head_end(conn.inbuf)
            if end < 0 and len(conn.inbuf) <= self.max_head_bytes:
                return                    # wait for more (the deadline still runs)
            if end < 0 or end > self.max_head_bytes:
                self._answer(conn, 431, [], b"request head too large\n", close=True)
                return
            head = bytes(conn.inbuf[:end])
            del conn.inbuf[:rest]
            try:
                request = _parse_head(head)
            except BadRequest as exc:
                self._answer(conn, exc.status, [], f"{exc}\n".encode(), close=True)
                return
            self._answer_request(conn, request)

    def _answer_request(self, conn: _Conn, request: Request) -> None:
        headers = request.headers
        tokens = header_tokens(headers.get("connection", ""))
        keep_alive = request.version >= (1, 1) and "close" not in tokens
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            self._answer(conn, 405, [("Allow", _ALLOW)], f"{request.method} not allowed\n".encode(),
                         close=True)
            return
        length = headers.get("content-length", "0").strip()
        if "transfer-encoding" in headers or not length.isdigit() or int(length) != 0:
            self._answer(conn, 400, [], b"a request body is not accepted here\n", close=True)
            return
        if request.method == "OPTIONS":
            self._answer(conn, 204, [("Allow", _ALLOW)], b"", close=not keep_alive)
            return
        try:
            status, extra, body = self.respond(request)
        except Exception:
            log.exception("metrics exposition failed")
            status, extra, body = 500, [], b"metrics exposition failed\n"
        self._answer(conn, status, extra, body, close=not keep_alive or status >= 500,
                     head_only=request.method == "HEAD")

    @staticmethod
    def _response_bytes(status: int, headers: list[tuple[str, str]], body: bytes,
                        head_only: bool = False) -> bytes:
        if not any(name.lower() == "content-type" for name, _ in headers) and (body or status >= 400):
            headers = [("Content-Type", "text/plain; charset=utf-8"), *headers]
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
                 f"Date: {email.utils.formatdate(usegmt=True)}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if status != 204:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only or status == 204 else head + body

    def _answer(self, conn: _Conn, status: int, headers: list[tuple[str, str]], body: bytes, *,
                close: bool, head_only: bool = False) -> None:
        headers = [*headers, ("Connection", "close" if close else "keep-alive")]
        conn.out = memoryview(self._response_bytes(status, headers, body, head_only))
        conn.close_after = close
        # an error may leave part of the request unread: drain it so the client sees the answer
        conn.drained = 0 if (status >= 400 or conn.inbuf) else -1
        conn.state = _Conn.WRITE
        conn.deadline = time.monotonic() + self.head_timeout
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                self._watch(conn, selectors.EVENT_WRITE)
                return
            conn.out = conn.out[sent:]
        if not conn.close_after:
            conn.state = _Conn.HEAD
            conn.deadline = time.monotonic() + self.head_timeout
            self._watch(conn, selectors.EVENT_READ)
        elif conn.drained < 0:
            self._close(conn)
        else:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.inbuf.clear()
            conn.state = _Conn.LINGER
            conn.deadline = time.monotonic() + min(LINGER_TIMEOUT, self.head_timeout)
            self._watch(conn, selectors.EVENT_READ)


# Exporters alive in this process: a forked worker child closes their listening sockets so the
# metrics port is never held by a child (one at-fork hook for all; they cannot be unregistered).
