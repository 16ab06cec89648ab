"""WebSocket chat: a page and its WebSocket on one port; every message goes to everyone.

    python examples/websocket_chat.py --port 8081     then open http://127.0.0.1:8081/

Plain `GET /` is answered with websocket_chat.html (through WebSocketProtocol's on_request
hook); a request with `Upgrade: websocket` becomes a chat connection.
"""
from __future__ import annotations

import argparse
import logging
import os
import threading

from reactor import Connection, Handler, Server
from reactor.plugins.websocket import HttpRequest, HttpResponse, WebSocketProtocol

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "websocket_chat.html")
MAX_TEXT = 4096


class Chat(Handler):
    """Keeps the open chat connections; relays each text message to all of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()          # connections may live on several loops
        self.members: set[Connection] = set()

    def on_request(self, conn: Connection, request: HttpRequest) -> HttpResponse | None:
        """WebSocketProtocol's hook: the page for GET /, 404 for other plain requests; an
        upgrade to /chat is accepted and the connection joins (sends to it before the upgrade
        completes follow the 101 response)."""
        if request.is_websocket:
            if request.path != "/chat":
                return HttpResponse(404, "no such chat")
            with self.lock:
                self.members.add(conn)
            return None
        if request.method == "GET" and request.path in ("/", "/index.html"):
            with open(PAGE, "rb") as f:
                return HttpResponse(200, f.read(), content_type="text/html; charset=utf-8")
        return HttpResponse(404, "not found")

    def on_message(self, conn, ctx, data):
        if not isinstance(data, str):
            return None                        # the chat is text only
        with self.lock:
            members = list(self.members)
        for member in members:
            try:
                member.send(data[:MAX_TEXT])
            except ConnectionError:            # closed meanwhile
                pass
        return None

    def on_close(self, conn, error):
        with self.lock:
            self.members.discard(conn)


def build_server(address: str, num_loops: int = 1) -> Server:
    """The chat server (not started): used by main() and by the browser test."""
    chat = Chat()
    protocol = WebSocketProtocol(max_message_size=64 << 10, on_request=chat.on_request)
    return Server(chat, address=address, protocol=protocol, num_loops=num_loops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--loops", type=int, default=1, help="event loops (threads)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    build_server(f"{args.host}:{args.port}", args.loops).start()


if __name__ == "__main__":
    main()
