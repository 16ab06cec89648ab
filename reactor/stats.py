"""Stats: the plain counters the loops bump, summed for metrics at scrape time (no locks: a
scrape may see one turn's counters half-updated, which a monotonic counter tolerates)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import EventLoop

#: Upper bounds (seconds) of the loop-turn histogram buckets.
TURN_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


def collect(loops: list[EventLoop], connections: int) -> dict[str, Any]:
    """Counters summed over one process's loops, in the shape reactor.metrics exports."""
    closed: dict[str, int] = {}
    turn_counts = [0] * (len(TURN_BUCKETS) + 1)
    stats: dict[str, Any] = {"connections": connections, "accepted": 0, "received_bytes": 0,
                             "sent_bytes": 0, "backpressure_pauses": 0, "turn_sum": 0.0}
    for loop in loops:
        stats["accepted"] += loop.accepted
        stats["received_bytes"] += loop.received_bytes
        stats["sent_bytes"] += loop.sent_bytes
        stats["backpressure_pauses"] += loop.backpressure_pauses
        stats["turn_sum"] += loop.turn_sum
        for reason, n in list(loop.closer.closed_by_reason.items()):
            closed[reason] = closed.get(reason, 0) + n
        for i, n in enumerate(loop.turn_counts):
            turn_counts[i] += n
    stats["closed"] = closed
    buckets = []
    total = 0
    for bound, n in zip((*TURN_BUCKETS, float("inf")), turn_counts):
        total += n
        buckets.append((bound, total))
    stats["turn_buckets"] = buckets
    stats["turn_count"] = total
    return stats


__all__ = ["TURN_BUCKETS", "collect"]
