"""reactor: pygev's event loops, server, connections and protocols.

    from reactor import Server, Handler

    class Echo(Handler):
        def on_message(self, conn, ctx, data):
            return data

    Server(Echo(), address="127.0.0.1:1833").start()
"""
from .client import Client
from .connection import Connection
from .errors import ConnectionClosed, OutputLimitExceeded, PeerTimeout, ProtocolError
from .handler import Handler
from .loop import EventLoop
from .options import ServerOptions
from .protocol import DefaultProtocol, NativePlan, Protocol
from .server import Server
from .timers import Timer

__all__ = ["Client", "Connection", "ConnectionClosed", "DefaultProtocol", "EventLoop", "Handler",
           "NativePlan", "OutputLimitExceeded", "PeerTimeout", "Protocol", "ProtocolError", "Server",
           "ServerOptions", "Timer"]
__version__ = "0.1.0"
