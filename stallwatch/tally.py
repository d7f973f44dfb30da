"""Per-request metrics, counted on the loop thread and handed to prometheus-client in bulk.

Three prometheus-client updates per request (two histograms and a counter, each taking a
lock) cost more than everything else stallwatch does for a request. A ``Tally`` counts the
same observations in plain lists on the loop thread and adds them to the real metric
children every ``flush`` (the heartbeat flushes ten times a second, and every scrape served
by the app flushes first), so the totals a scrape sees are those prometheus-client would
have had, up to 100 ms late for a scrape served elsewhere (another thread or worker).

Bulk adding needs a histogram child's per-bucket values, which prometheus-client keeps in
``_buckets`` and ``_sum`` (the same in multiprocess mode, where they are file-backed). That is
private API: ``Tally`` checks its shape once and falls back to plain ``observe`` calls when
it is not what it expects, so a future prometheus-client costs speed, never correctness.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any


def _bulk_ready(child: Any) -> bool:
    buckets = getattr(child, "_buckets", None)
    bounds = getattr(child, "_upper_bounds", None)
    total = getattr(child, "_sum", None)
    return (
        isinstance(buckets, list)
        and isinstance(bounds, list)
        and len(buckets) == len(bounds)
        and bounds[-1] == float("inf")
        and callable(getattr(total, "inc", None))
        and all(callable(getattr(b, "inc", None)) for b in buckets)
    )


class HistogramTally:
    """One histogram child's pending observations."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum", "bulk", "pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.bulk = _bulk_ready(child)
        self._bounds: list[float] = list(child._upper_bounds) if self.bulk else []
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self.pending = False

    def observe(self, value: float) -> None:
        if not self.bulk:
            self._child.observe(value)
            return
        # prometheus buckets are "less than or equal": the first bound >= value.
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self.pending = True

    def flush(self) -> None:
        if not self.pending:
            return
        self.pending = False
        buckets = self._child._buckets
        counts = self._counts
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        self._child._sum.inc(self._sum)
        self._sum = 0.0


class RequestTally:
    """Latency, longest hold and busy time of one (method, route, status)."""

    __slots__ = ("_busy", "_busy_child", "duration", "hold", "pending")

    def __init__(self, duration: Any, hold: Any, busy: Any) -> None:
        self.duration = HistogramTally(duration)
        self.hold = HistogramTally(hold)
        self._busy_child = busy
        self._busy = 0.0
        self.pending = False

    def add(self, duration: float, longest: float, busy: float) -> None:
        self.duration.observe(duration)
        self.hold.observe(longest)
        self._busy += busy
        self.pending = True

    def flush(self) -> None:
        if not self.pending:
            return
        self.pending = False
        self.duration.flush()
        self.hold.flush()
        if self._busy:
            self._busy_child.inc(self._busy)
            self._busy = 0.0
