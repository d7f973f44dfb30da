"""Per-request metrics, counted on the loop thread and handed to prometheus-client in bulk.

Three to five prometheus-client updates per request (two histograms and a counter, each taking a
lock) cost more than everything else stallwatch does for a request. A ``Tally`` counts the
same observations in plain lists on the loop thread and adds them to the real metric
children every ``flush`` (the heartbeat flushes ten times a second, and every scrape served
by the app flushes first), so the totals a scrape sees are those prometheus-client would
have had, up to 100 ms late for a scrape served elsewhere (another thread or worker).

Bulk adding needs a histogram child's per-bucket values, which prometheus-client keeps in
``_buckets`` and ``_sum`` (the same in multiprocess mode, where they are file-backed). That is
private API: ``Tally`` checks its shape once and falls back to plain ``observe`` calls when
it is not what it expects, so a future prometheus-client costs speed, never correctness.

Exemplars (``opentelemetry=True``: the request's ``trace_id`` and ``span_id``) ride along:
each bucket keeps the last one observed in it until the flush, as prometheus-client's own
``observe(value, exemplar)`` would have left it; a counter gets the last one with its part of
the increment. prometheus-client's multiprocess mode drops them (docs/deployment.md).
"""

from __future__ import annotations

from bisect import bisect_left
from time import time
from typing import TYPE_CHECKING, Any

from prometheus_client.samples import Exemplar

from ..routes import KNOWN_METHODS, method_label

if TYPE_CHECKING:
    from ..loop.history import LoopHistory
    from ..metrics import Metrics


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

    __slots__ = ("_child", "_exemplars", "bounds", "bulk", "counts", "pending", "sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.bulk = _bulk_ready(child)
        self.bounds: list[float] = list(child._upper_bounds) if self.bulk else []
        """Upper bounds, as prometheus-client's child has them (bulk only)."""
        self.counts = [0] * len(self.bounds)
        """Observations per bucket (not cumulative) since the last flush."""
        self.sum = 0.0
        self._exemplars: dict[int, Exemplar] | None = None
        self.pending = False

    def observe(self, value: float, exemplar: dict[str, str] | None = None) -> None:
        if not self.bulk:
            if exemplar is None:
                self._child.observe(value)
            else:
                self._child.observe(value, exemplar)
            return
        # prometheus buckets are "less than or equal": the first bound >= value.
        index = bisect_left(self.bounds, value)
        self.counts[index] += 1
        self.sum += value
        self.pending = True
        if exemplar is not None:
            if self._exemplars is None:
                self._exemplars = {}
            self._exemplars[index] = Exemplar(exemplar, value, time())

    def flush(self) -> None:
        if not self.pending:
            return
        self.pending = False
        buckets = self._child._buckets
        counts = self.counts
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        self._child._sum.inc(self.sum)
        self.sum = 0.0
        exemplars = self._exemplars
        if exemplars is not None:
            self._exemplars = None
            for i, exemplar in exemplars.items():
                set_exemplar = getattr(buckets[i], "set_exemplar", None)
                if set_exemplar is not None:
                    set_exemplar(exemplar)


class RequestTally:
    """Latency, longest hold and busy time of one (method, route, status)."""

    __slots__ = ("_busy", "_busy_child", "duration", "hold", "pending", "route")

    def __init__(self, route: str, duration: Any, hold: Any, busy: Any) -> None:
        self.route = route
        self.duration = HistogramTally(duration)
        self.hold = HistogramTally(hold)
        self._busy_child = busy
        self._busy = 0.0
        self.pending = False

    def add(
        self, duration: float, longest: float, busy: float, exemplar: dict[str, str] | None
    ) -> None:
        duration_tally = self.duration
        hold = self.hold
        if exemplar is None and duration_tally.bulk and hold.bulk:
            # ``observe`` twice, written out: this runs once for every request.
            duration_tally.counts[bisect_left(duration_tally.bounds, duration)] += 1
            duration_tally.sum += duration
            duration_tally.pending = True
            hold.counts[bisect_left(hold.bounds, longest)] += 1
            hold.sum += longest
            hold.pending = True
        else:
            duration_tally.observe(duration, exemplar)
            hold.observe(longest)
        self._busy += busy
        self.pending = True

    def flush(self) -> float:
        """Hand over what is pending; returns the busy seconds handed over."""
        if not self.pending:
            return 0.0
        self.pending = False
        self.duration.flush()
        self.hold.flush()
        busy = self._busy
        if busy:
            self._busy_child.inc(busy)
            self._busy = 0.0
        return busy


class FrozenTally:
    """Frozen seconds and frozen requests of one (victim route, culprit)."""

    __slots__ = ("_requests", "_seconds", "exemplar", "requests", "seconds")

    def __init__(self, seconds: Any, requests: Any) -> None:
        self._seconds = seconds
        self._requests = requests
        self.seconds = 0.0
        self.requests = 0
        self.exemplar: tuple[dict[str, str], float] | None = None
        """The last traced request's exemplar and its seconds, until the flush."""

    def flush(self) -> float:
        seconds = self.seconds
        if seconds:
            exemplar = self.exemplar
            if exemplar is None:
                self._seconds.inc(seconds)
            else:
                # Two increments, so that the exemplar's value is that request's own seconds.
                self.exemplar = None
                labels, own = exemplar
                if seconds - own > 0.0:
                    self._seconds.inc(seconds - own)
                self._seconds.inc(min(own, seconds), labels)
            self.seconds = 0.0
        if self.requests:
            self._requests.inc(self.requests)
            self.requests = 0
        return seconds


_KEYED_METHODS = KNOWN_METHODS | {"WEBSOCKET"}
"""Methods that are their own label (``routes.KNOWN_METHODS``), and the middleware's own."""


def status_label(status: int, group: bool) -> str:
    """The status code, or its class (``2xx``) where the app returns too many codes."""
    return f"{status // 100}xx" if group else str(status)


class RequestMetrics:
    """Everything counted when a request ends, per label set, flushed in bulk (loop thread).

    Label children are looked up once per label set, never per request: ``.labels()`` costs
    more than the observation itself.
    """

    def __init__(self, metrics: Metrics, *, group_status: bool) -> None:
        self._metrics = metrics
        self._group = group_status
        self._requests: dict[tuple[Any, str, int], RequestTally] = {}
        self._frozen: dict[str, dict[str, FrozenTally]] = {}
        """Route, then culprit: one lookup per request, then one per culprit."""
        self._pending = False

    def add(
        self,
        method: Any,
        route: str,
        status: int,
        duration: float,
        longest: float,
        busy: float,
        frozen: dict[str, float] | None,
        floor: float,
        exemplar: dict[str, str] | None = None,
    ) -> None:
        # Raw methods are client input, never a key: anything unknown is one label.
        key = (method if method in _KEYED_METHODS else method_label(method), route, status)
        tally = self._requests.get(key)
        if tally is None:
            tally = self._new_tally(key)
        tally.add(duration, longest, busy, exemplar)
        if frozen:
            by_culprit = self._frozen.get(route)
            if by_culprit is None:
                by_culprit = self._frozen[route] = {}
            for culprit, seconds in frozen.items():
                pair = by_culprit.get(culprit)
                if pair is None:
                    metrics = self._metrics
                    pair = by_culprit[culprit] = FrozenTally(
                        metrics.frozen_seconds.labels(route, culprit),
                        metrics.frozen_requests.labels(route, culprit),
                    )
                pair.seconds += seconds
                if seconds >= floor:
                    pair.requests += 1
                if exemplar is not None:
                    pair.exemplar = (exemplar, seconds)
        self._pending = True

    def _new_tally(self, key: tuple[Any, str, int]) -> RequestTally:
        method, route, status = key
        metrics = self._metrics
        tally = self._requests[key] = RequestTally(
            route,
            metrics.request_duration.labels(method, route, status_label(status, self._group)),
            metrics.loop_hold.labels(route),
            metrics.loop_busy.labels(route),
        )
        return tally

    def flush(self, late_busy: dict[str, float] | None, history: LoopHistory | None) -> None:
        """Hand everything pending to prometheus-client, and the loop's recent history."""
        if late_busy:  # tasks that outlived their request: their route's loop time
            busy_metric = self._metrics.loop_busy
            for route, seconds in late_busy.items():
                busy_metric.labels(route).inc(seconds)
                if history is not None:
                    history.busy(route, seconds)
        if not self._pending:
            return
        self._pending = False
        for tally in self._requests.values():
            busy = tally.flush()
            if busy and history is not None:
                history.busy(tally.route, busy)
        for route, by_culprit in self._frozen.items():
            for culprit, pair in by_culprit.items():
                seconds = pair.flush()
                if seconds and history is not None:
                    history.frozen(route, culprit, seconds)
