"""``LoopHistory``: the last minutes of the loop, in one-second buckets, for the report.

Prometheus keeps the long history; the report needs the recent one without a Prometheus
server: the lag distribution and its series for a chart, each route's share of the loop, and
who froze whom. The history is a ring of ``span / bucket`` time buckets, so its memory is
fixed however long the process lives and however much traffic it serves.

Writers and readers:

- ``beat`` runs on the loop thread about a hundred times a second (and once more per missed
  beat after a stall). It is the hot path: it stores the lag in a preallocated list and reads
  the clock; nothing is allocated but the float the clock returns. Once a bucket's time is
  over, its lags are sorted into fixed bins (about a hundred bisects, once a second), so that
  merging minutes of buckets stays cheap for the reader; a burst of missed beats that fills
  the list is binned at once.
- ``busy`` and ``frozen`` run on the loop thread about ten times a second (the middleware's
  flush), with seconds counted since the previous flush.
- ``snapshot`` runs on any thread (the off-loop server's too). It copies the ring under a lock
  that only the once-a-second bucket change also takes, so ``beat`` never waits on a reader;
  an increment racing the copy lands in this snapshot or the next one, never in a wrong bucket.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate
from typing import Any

LAG_QUANTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
)

_BINS_PER_OCTAVE = 4
"""Lag bins grow by 2**(1/4) (19 %): a percentile is read as its bin's upper edge, so it is
at most 19 % high, and never more than the largest lag actually seen."""

PENDING = 1024
"""Lags kept unbinned in the current bucket: ten seconds of beats at the default interval."""

LAG_EDGES: tuple[float, ...] = tuple(
    1e-5 * 2 ** (i / _BINS_PER_OCTAVE) for i in range(_BINS_PER_OCTAVE * 24 + 1)
)
"""Upper edges of the lag bins, 10 us to about 168 s; one more bin holds anything longer."""


class LoopHistory:
    """The recent loop lag, route busy time and frozen time, in a fixed ring of buckets."""

    __slots__ = (
        "_bins",
        "_busy",
        "_clock",
        "_cur_bins",
        "_cur_busy",
        "_cur_frozen",
        "_cur_max",
        "_edges",
        "_epoch",
        "_epochs",
        "_frozen",
        "_lock",
        "_max",
        "_n",
        "_next_at",
        "_pending",
        "_size",
        "_slot",
        "_started",
        "_wall",
        "_zeros",
        "bucket",
        "span",
    )

    def __init__(
        self,
        *,
        span: float = 300.0,
        bucket: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(bucket, (int, float)) or not 0.01 <= bucket <= 60.0:
            raise ValueError(f"bucket must be 0.01 to 60 seconds, got {bucket!r}")
        if not isinstance(span, (int, float)) or not bucket <= span <= 86_400.0:
            raise ValueError(f"span must be from one bucket to 86400 seconds, got {span!r}")
        self.span = float(span)
        self.bucket = float(bucket)
        self._clock = clock
        self._wall = wall
        self._edges = LAG_EDGES
        self._size = math.ceil(span / bucket)
        nbins = len(LAG_EDGES) + 1
        self._zeros = [0] * nbins
        self._bins = [[0] * nbins for _ in range(self._size)]
        self._max = [0.0] * self._size
        self._busy: list[dict[str, float]] = [{} for _ in range(self._size)]
        self._frozen: list[dict[tuple[str, str], float]] = [{} for _ in range(self._size)]
        self._epochs = [-1] * self._size  # which bucket (time // bucket) each slot holds
        self._lock = threading.Lock()
        now = clock()
        self._started = now
        self._epoch = math.floor(now / self.bucket)
        self._slot = self._epoch % self._size
        self._epochs[self._slot] = self._epoch
        self._cur_bins = self._bins[self._slot]
        self._cur_busy = self._busy[self._slot]
        self._cur_frozen = self._frozen[self._slot]
        self._cur_max = 0.0
        self._pending = [0.0] * PENDING
        self._n = 0
        self._next_at = (self._epoch + 1) * self.bucket

    # -- writers (loop thread) ---------------------------------------------------------------

    def beat(self, lag: float) -> None:
        """One heartbeat's lag in seconds (or a missed beat's); the hot path."""
        if self._clock() >= self._next_at:
            self._advance()
        n = self._n
        try:
            self._pending[n] = lag
        except IndexError:  # a burst of missed beats filled the list: bin it now
            with self._lock:
                self._bin_pending()
            self._pending[0] = lag
            n = 0
        self._n = n + 1

    def _bin_pending(self) -> None:
        """Move the current bucket's unbinned lags into its bins (loop thread, under the lock)."""
        n = self._n
        if not n:
            return
        bins = self._cur_bins
        edges = self._edges
        pending = self._pending
        for i in range(n):
            bins[bisect_right(edges, pending[i])] += 1
        self._cur_max = max(self._cur_max, max(pending[:n]))
        self._n = 0

    def busy(self, route: str, seconds: float) -> None:
        """Loop seconds ``route``'s requests ran since the last call."""
        if self._clock() >= self._next_at:
            self._advance()
        busy = self._cur_busy
        busy[route] = busy.get(route, 0.0) + seconds

    def frozen(self, route: str, culprit: str, seconds: float) -> None:
        """Seconds ``route``'s requests waited while ``culprit`` held the loop."""
        if self._clock() >= self._next_at:
            self._advance()
        key = (route, culprit)
        frozen = self._cur_frozen
        frozen[key] = frozen.get(key, 0.0) + seconds

    def _advance(self) -> None:
        """Move to the bucket of now, emptying every bucket skipped since the last write."""
        epoch = math.floor(self._clock() / self.bucket)
        with self._lock:
            self._bin_pending()
            self._max[self._slot] = self._cur_max
            first = max(self._epoch + 1, epoch - self._size + 1)
            for e in range(first, epoch + 1):
                slot = e % self._size
                self._bins[slot][:] = self._zeros
                self._max[slot] = 0.0
                self._busy[slot].clear()
                self._frozen[slot].clear()
                self._epochs[slot] = e
            self._epoch = epoch
            self._slot = epoch % self._size
            self._cur_bins = self._bins[self._slot]
            self._cur_busy = self._busy[self._slot]
            self._cur_frozen = self._frozen[self._slot]
            self._cur_max = 0.0
            self._next_at = (epoch + 1) * self.bucket

    # -- reader (any thread) -----------------------------------------------------------------

    def snapshot(self, window: float = 300.0) -> dict[str, Any]:
        """The last ``window`` seconds (at most ``span``), JSON-ready; durations in seconds."""
        if not isinstance(window, (int, float)) or window <= 0:
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        now = self._clock()
        wall_now = self._wall()
        with self._lock:
            current = self._epoch
            slot_now = self._slot
            epochs = list(self._epochs)
            bins = [list(b) for b in self._bins]
            maxima = list(self._max)
            pending = self._pending[: self._n]
            maxima[slot_now] = max(self._cur_max, max(pending, default=0.0))
            busy = [dict(b) for b in self._busy]
            frozen = [dict(f) for f in self._frozen]
        for value in pending:  # the current bucket's lags not binned yet
            bins[slot_now][bisect_right(self._edges, value)] += 1
        # The writer may have moved to a newer bucket since the clock was read.
        last = max(math.floor(now / self.bucket), current)
        count = min(self._size, max(1, math.ceil(min(window, self.span) / self.bucket)))
        covered = max(min(count * self.bucket, now - self._started), 1e-9)
        series: list[dict[str, Any]] = []
        rows: list[list[int]] = []
        window_max = 0.0
        routes: dict[str, float] = {}
        victims: dict[tuple[str, str], float] = {}
        for e in range(last - count + 1, last + 1):
            slot = e % self._size
            point: dict[str, Any] = {"t": wall_now - (now - e * self.bucket), "beats": 0}
            if e <= current and epochs[slot] == e:
                counts = bins[slot]
                cumulative = list(accumulate(counts))
                point["beats"] = beats = cumulative[-1]
                slot_busy = sum(busy[slot].values())
                point["busy"] = slot_busy
                if beats:
                    rows.append(counts)
                    window_max = max(window_max, maxima[slot])
                    point["p50"] = self._quantile(cumulative, 0.5, maxima[slot])
                    point["p99"] = self._quantile(cumulative, 0.99, maxima[slot])
                    point["max"] = maxima[slot]
                for route, seconds in busy[slot].items():
                    routes[route] = routes.get(route, 0.0) + seconds
                for key, seconds in frozen[slot].items():
                    victims[key] = victims.get(key, 0.0) + seconds
            series.append(point)
        merged = list(map(sum, zip(*rows, strict=True))) if rows else list(self._zeros)
        cumulative = list(accumulate(merged))
        beats = cumulative[-1]
        lag: dict[str, float | None] = {
            name: self._quantile(cumulative, q, window_max) if beats else None
            for name, q in LAG_QUANTILES
        }
        lag["max"] = window_max if beats else None
        return {
            "window": count * self.bucket,
            "covered": covered,
            "bucket": self.bucket,
            "now": wall_now,
            "beats": beats,
            "lag": lag,
            "series": series,
            "routes": [
                {"route": route, "busy": seconds, "share": seconds / covered}
                for route, seconds in sorted(routes.items(), key=lambda kv: -kv[1])
            ],
            "frozen": [
                {"route": route, "culprit": culprit, "seconds": seconds}
                for (route, culprit), seconds in sorted(victims.items(), key=lambda kv: -kv[1])
            ],
        }

    def _quantile(self, cumulative: list[int], q: float, seen_max: float) -> float:
        """The upper edge of the bin holding the ``q`` quantile, capped by the largest lag."""
        rank = q * cumulative[-1]
        index = bisect_right(cumulative, math.ceil(rank) - 1)
        if index == 0:
            return 0.0  # under 10 us: no lag worth a digit (uvloop's clock reads whole ms)
        if index >= len(self._edges):
            return seen_max
        return min(self._edges[index], seen_max)
