"""Timers: run_after fires once with its args, run_every repeats until cancelled, timers run on
the loop they belong to.  "Time passing" is measured by counting ticks of a probe timer, never by
comparing wall-clock durations."""
from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from support import EchoRecorder, Recorder, connect, recv_exactly, serve, wait_until


class Probe:
    """A run_every callback that counts its calls and remembers its thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.threads: set[int] = set()

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)
        self.threads.add(threading.get_ident())

    def wait_more(self, n: int) -> None:
        """Wait until this probe has run n more times."""
        target = len(self.calls) + n
        wait_until(lambda: len(self.calls) >= target, what=f"{n} more timer ticks")


def test_run_after_fires_once_with_args_and_run_every_repeats() -> None:
    once = Probe()
    srv = serve(Recorder())
    srv.run_after(0.01, once, 1, "two")            # registered before the server starts
    with srv:
        every = Probe()
        ticker = srv.run_every(0.01, every, "tick")
        every.wait_more(10)                          # plenty of chances to fire again
        ticker.cancel()
        assert once.calls == [(1, "two")]
        assert every.calls[:10] == [("tick",)] * 10
        # Server timers run on the first event loop: one thread, not the caller's.
        assert once.threads == every.threads and len(once.threads) == 1
        assert threading.get_ident() not in once.threads


def test_cancel_stops_a_repeating_timer() -> None:
    with serve(Recorder()) as srv:
        probe = Probe()
        srv.run_every(0.01, probe)
        victim = Probe()
        timer = srv.run_every(0.01, victim)
        victim.wait_more(3)
        timer.cancel()
        probe.wait_more(2)                           # any run under way has finished
        seen = len(victim.calls)
        probe.wait_more(10)
        assert len(victim.calls) == seen


def test_timer_can_cancel_itself_and_pending_run_after_can_be_cancelled() -> None:
    with serve(Recorder()) as srv:
        probe = Probe()
        srv.run_every(0.02, probe)
        count = [0]
        timers: list[Any] = []

        def three_times() -> None:
            count[0] += 1
            if count[0] == 3:
                timers[0].cancel()

        timers.append(srv.run_every(0.01, three_times))
        never = Probe()
        srv.run_after(0.1, never).cancel()
        probe.wait_more(15)                          # >= 0.3 s of timer time
        assert count[0] == 3
        assert never.calls == []


def test_conn_loop_run_after_runs_on_that_connections_loop() -> None:
    ran: dict[int, list[int]] = {}

    def record(conn_id: int) -> None:
        ran.setdefault(conn_id, []).append(threading.get_ident())

    handler = EchoRecorder()
    with serve(handler, num_loops=2, load_balance="round_robin") as srv:
        socks = []
        for _ in range(2):
            socks.append(connect(srv.address))
            handler.wait_connected(len(socks))
        conns = handler.connected
        assert conns[0].loop is not conns[1].loop
        for conn in conns:
            conn.loop.run_after(0.01, record, id(conn))
        wait_until(lambda: len(ran) == 2, what="per-loop timers")
        for conn in conns:
            assert ran[id(conn)] == [handler.connect_thread[id(conn)]]
        assert ran[id(conns[0])] != ran[id(conns[1])]
        for sock in socks:
            sock.close()


def test_timer_exception_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="reactor")
    raised: list[BaseException] = []

    def fail() -> None:
        exc = ZeroDivisionError("timer failed")
        raised.append(exc)
        raise exc

    with serve(EchoRecorder()) as srv:
        srv.run_after(0.01, fail)
        probe = Probe()
        srv.run_every(0.01, probe)
        wait_until(lambda: raised, what="the failing timer")
        probe.wait_more(3)                           # timers keep running
        sock = connect(srv.address)                  # and so does the server
        with sock:
            sock.sendall(b"alive")
            assert recv_exactly(sock, 5) == b"alive"
    assert any(r.levelno == logging.ERROR and r.exc_info and r.exc_info[1] is raised[0]
               for r in caplog.records), caplog.text
