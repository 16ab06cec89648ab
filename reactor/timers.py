"""Timers for an event loop: a heap of deadlines, cancelled lazily."""
from __future__ import annotations

import heapq
import itertools
import logging
from time import monotonic
from typing import Any, Callable

log = logging.getLogger("reactor.loop")


class Timer:
    """A scheduled call; `cancel()` stops it (from any thread) before its next run."""

    __slots__ = ("when", "interval", "fn", "args", "cancelled")

    def __init__(self, when: float, interval: float | None, fn: Callable[..., Any], args: tuple) -> None:
        self.when = when
        self.interval = interval
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the timer; a run already under way finishes."""
        self.cancelled = True

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"at {self.when:.3f}"
        every = f" every {self.interval}s" if self.interval else ""
        return f"<Timer {getattr(self.fn, '__qualname__', self.fn)!s} {state}{every}>"


class TimerQueue:
    """Deadline heap owned by one loop thread.  Cancelled timers are dropped when they surface."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def push(self, timer: Timer) -> None:
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None when nothing is scheduled."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> list[Timer]:
        """Remove and return the live timers due at `now`, earliest first."""
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if not timer.cancelled:
                due.append(timer)
        return due

    def run_due(self, now: float, slow: float | None, index: int) -> float | None:
        """Run the timers due at `now` on loop `index` (one raising is logged, one slower than
        `slow` named), re-arm the repeating ones; returns the next deadline."""
        for timer in self.pop_due(now):
            started = monotonic()
            try:
                timer.fn(*timer.args)
            except Exception:
                log.exception("timer callback %r raised", timer.fn)
            finally:
                spent = monotonic() - started
                if slow and spent > slow:
                    log.warning("slow callback: timer %s took %.3f s, blocking loop %d",
                                getattr(timer.fn, "__qualname__", timer.fn), spent, index)
            if timer.interval and not timer.cancelled:
                timer.when = max(timer.when + timer.interval, now)
                self.push(timer)
        return self.next_deadline()

    def __len__(self) -> int:
        return len(self._heap)
