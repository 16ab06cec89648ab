"""Client: event loops without a listener, for programs that only dial (`loop.connect`).

It is a Server that does not listen: the same loops, threads, timers, metrics and stop, so
`start()` blocks until `stop()`, `with Client() as cli:` runs the loops in a background thread,
and `stop()` closes every dialed connection after flushing it, as Server.stop() does.
"""
from __future__ import annotations

from typing import Any

from .handler import Handler
from .options import LoadBalance
from .server import Server


class Client(Server):
    """Loops that dial: `with Client() as cli: conn = cli.connect("127.0.0.1:6379", handler)`.

    Options (checked here, TypeError / ValueError naming them) mean what they mean for Server:
    num_loops=1, load_balance="round_robin" (which loop a connect() dials on), idle_timeout,
    tcp_nodelay, tcp_keepalive, read_buffer_size, write_high_water, write_low_water,
    write_limit, view_threshold, frame_timeout, handshake_timeout, slow_callback,
    metrics_address, metrics_path.  Protocol and TLS are per connect().
    """

    def __init__(self, *, num_loops: int = 1, load_balance: LoadBalance = "round_robin",
                 idle_timeout: float | None = None, tcp_nodelay: bool = True,
                 tcp_keepalive: float | None = None, read_buffer_size: int = 65536,
                 write_high_water: int = 1 << 20, write_low_water: int | None = None,
                 write_limit: int | None = None, view_threshold: int | None = 4096,
                 frame_timeout: float = 30.0, handshake_timeout: float | None = 10.0,
                 slow_callback: float | None = 0.1, metrics_address: str | None = None,
                 metrics_path: str = "/metrics") -> None:
        super().__init__(Handler(), address="127.0.0.1:0", num_loops=num_loops,
                         load_balance=load_balance, idle_timeout=idle_timeout,
                         tcp_nodelay=tcp_nodelay, tcp_keepalive=tcp_keepalive,
                         read_buffer_size=read_buffer_size, write_high_water=write_high_water,
                         write_low_water=write_low_water, write_limit=write_limit,
                         view_threshold=view_threshold, frame_timeout=frame_timeout,
                         handshake_timeout=handshake_timeout, slow_callback=slow_callback,
                         metrics_address=metrics_address, metrics_path=metrics_path)
        self.listens = False

    def __enter__(self) -> Client:
        super().__enter__()
        return self

    @property
    def connection_count(self) -> int:
        """Dialed connections open now, across all loops."""
        return sum(loop.dialer.open for loop in self._loops)

    def __repr__(self) -> str:
        state = "running" if self._serving else "stopped" if self._stop_requested else "not started"
        return f"<Client {state} loops={self.num_loops} connections={self.connection_count}>"

    def connect(self, address: str, handler: Handler, **options: Any) -> Any:
        """Dial `address` on a loop the load balancer picks (see EventLoop.connect)."""
        return super().connect(address, handler, **options)


__all__ = ["Client"]
