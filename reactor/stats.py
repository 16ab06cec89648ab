"""Stats: the plain counters the loops bump, summed for metrics at scrape time (no locks: a
scrape may see one turn's counters half-updated, which a monotonic counter tolerates).
`connections` / `accepted` are inbound (accepted) connections; `outbound` / `dialed` /
`dial_failed` count the dialed ones (loop.connect)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import EventLoop

log = logging.getLogger("reactor.loop")

#: Upper bounds (seconds) of the loop-turn histogram buckets.
TURN_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


#: Reasons a connection can close; always exported (as 0 when unseen) so dashboards see every series.
CLOSE_REASONS = ("peer", "local", "reset", "error", "idle", "stop", "bad_input", "over_limit",
                 "write_limit", "timeout", "handshake_timeout", "frame_timeout")

Stats = dict[str, Any]


def warn_slow_turn(index: int, handler: str, spent: float, nrows: int,
                   phases: tuple[float, ...]) -> None:
    """Warn about a turn that blocked loop `index`, naming the part of it that took the time
    (phases: reading and callbacks, posted calls, timers, writing)."""
    what = (f"handling {nrows} events (reads, closes and {handler}'s callbacks)",
            "calls posted from other threads (send(), close(), call_soon())",
            "timer callbacks", "writing output (bytes the kernel did not take are copied to "
            "the connections' output rings)")
    slowest = max(range(4), key=phases.__getitem__)
    if slowest == 2:
        return          # each slow timer callback was named already
    log.warning("slow loop turn in loop %d: %.3f s, %.3f s of it in %s", index, spent,
                phases[slowest], what[slowest])


def empty_stats() -> Stats:
    """A `stats()`-shaped dict with every figure at zero (the sum of no processes)."""
    return {
        "connections": 0,
        "accepted": 0,
        "outbound": 0,
        "dialed": 0,
        "dial_failed": 0,
        "closed": {reason: 0 for reason in CLOSE_REASONS},
        "received_bytes": 0,
        "sent_bytes": 0,
        "backpressure_pauses": 0,
        "turn_buckets": [],
        "turn_sum": 0.0,
        "turn_count": 0,
        "datagrams_dropped": {},
    }


def add_stats(total: Stats, part: Stats, *, counters_only: bool = False) -> None:
    """Add `part` into `total` in place.  Histograms are summed bucket by bucket (same bounds
    in every process); `counters_only` leaves the `connections` gauge out (for dead workers)."""
    if not counters_only:
        total["connections"] += part.get("connections", 0)
        total["outbound"] += part.get("outbound", 0)
    for key in ("accepted", "dialed", "dial_failed", "received_bytes", "sent_bytes",
                "backpressure_pauses", "turn_count"):
        total[key] += part.get(key, 0)
    total["turn_sum"] += part.get("turn_sum", 0.0)
    closed = total["closed"]
    for reason, count in part.get("closed", {}).items():
        closed[reason] = closed.get(reason, 0) + count
    dropped = total.setdefault("datagrams_dropped", {})
    for reason, count in part.get("datagrams_dropped", {}).items():
        dropped[reason] = dropped.get(reason, 0) + count
    buckets: dict[float, int] = dict(total["turn_buckets"])
    for bound, count in part.get("turn_buckets", ()):
        bound = float(bound)
        buckets[bound] = buckets.get(bound, 0) + count
    total["turn_buckets"] = sorted(buckets.items())


def collect(loops: list[EventLoop], connections: int) -> dict[str, Any]:
    """Counters summed over one process's loops, in the shape reactor.metrics exports."""
    closed: dict[str, int] = {}
    dropped: dict[str, int] = {}
    turn_counts = [0] * (len(TURN_BUCKETS) + 1)
    stats: dict[str, Any] = {"connections": connections, "accepted": 0, "outbound": 0, "dialed": 0,
                             "dial_failed": 0, "received_bytes": 0, "sent_bytes": 0,
                             "backpressure_pauses": 0, "turn_sum": 0.0}
    for loop in loops:
        stats["accepted"] += loop.accepted
        dialer = loop.dialer
        stats["outbound"] += dialer.open
        stats["dialed"] += dialer.dialed
        stats["dial_failed"] += dialer.failed
        stats["received_bytes"] += loop.received_bytes
        stats["sent_bytes"] += loop.sent_bytes
        stats["backpressure_pauses"] += loop.backpressure_pauses
        stats["turn_sum"] += loop.turn_sum
        for reason, n in list(loop.closer.closed_by_reason.items()):
            closed[reason] = closed.get(reason, 0) + n
        for reason, n in list(loop.datagrams_dropped.items()):
            dropped[reason] = dropped.get(reason, 0) + n
        for i, n in enumerate(loop.turn_counts):
            turn_counts[i] += n
    stats["closed"] = closed
    stats["datagrams_dropped"] = dropped      # UDP (udp.py): too_long, queue_full, over_limit, ...
    buckets = []
    total = 0
    for bound, n in zip((*TURN_BUCKETS, float("inf")), turn_counts):
        total += n
        buckets.append((bound, total))
    stats["turn_buckets"] = buckets
    stats["turn_count"] = total
    return stats


__all__ = ["CLOSE_REASONS", "Stats", "TURN_BUCKETS", "add_stats", "collect", "empty_stats"]
