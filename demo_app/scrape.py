"""The server's own view, read from its ``/metrics`` before and after a step.

Counters and histogram buckets only grow, so the difference of two scrapes is exactly what
happened in between: loop lag, request latency by route, stalls by culprit and cause, and
the seconds each route was frozen by each culprit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]

LAG = "stallwatch_event_loop_lag_seconds"
REQUESTS = "stallwatch_http_request_duration_seconds"
STALLS = "stallwatch_event_loop_stalls_total"
FROZEN = "stallwatch_request_frozen_seconds_total"
BUSY = "stallwatch_route_loop_busy_seconds_total"
POOL_WAIT = "stallwatch_executor_queue_wait_seconds"
POOL_RUN = "stallwatch_executor_run_seconds"


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def delta(before: Samples, after: Samples) -> Samples:
    """What grew between two scrapes (a series absent before counts from zero)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def select(samples: Samples, name: str, **match: str) -> Iterable[tuple[dict[str, str], float]]:
    for (sample_name, labels), value in samples.items():
        if sample_name != name:
            continue
        found = dict(labels)
        if all(found.get(k) == v for k, v in match.items()):
            yield found, value


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (upper bound, count), ``+Inf`` last, plus the sum."""

    buckets: tuple[tuple[float, float], ...]
    total: float

    @property
    def count(self) -> float:
        return self.buckets[-1][1] if self.buckets else 0.0

    def quantile(self, q: float) -> float:
        """As Prometheus's ``histogram_quantile``: linear inside the bucket holding the rank."""
        count = self.count
        if count <= 0:
            return float("nan")
        rank = q * count
        lower, below = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower  # beyond the last finite bucket: its bound is all we know
                inside = cumulative - below
                return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = bound, cumulative
        return lower

    def max_bound(self) -> float:
        """The upper bound of the highest bucket that holds any observation."""
        for bound, cumulative in self.buckets:
            if cumulative >= self.count:
                return bound
        return float("nan")

    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")


def histogram(samples: Samples, name: str, **match: str) -> Histogram:
    """The histogram ``name`` summed over every series whose labels include ``match``."""
    by_bound: dict[float, float] = defaultdict(float)
    total = 0.0
    for labels, value in select(samples, name + "_bucket", **match):
        by_bound[float(labels["le"])] += value
    for _, value in select(samples, name + "_sum", **match):
        total += value
    return Histogram(tuple(sorted(by_bound.items())), total)


def by_labels(
    samples: Samples,
    name: str,
    keys: tuple[str, ...],
    **match: str,
) -> dict[tuple[str, ...], float]:
    """Counter values summed by the given labels, zeros left out."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in select(samples, name, **match):
        if value:
            out[tuple(labels.get(k, "") for k in keys)] += value
    return dict(out)


@dataclass(frozen=True)
class ServerView:
    """One step as stallwatch saw it."""

    lag: Histogram
    routes: dict[str, Histogram]
    """Request latency by route template, all methods and statuses together."""
    frozen: dict[str, dict[str, float]]
    """Victim route -> culprit -> seconds frozen."""
    stalls: dict[tuple[str, str], float]
    """(culprit, cause) -> number of stalls."""
    busy: dict[str, float]
    """Route -> seconds its requests held the loop."""
    pool_wait: Histogram = Histogram((), 0.0)
    """How long the work handed to the loop's default executor waited for a thread."""
    pool_run: Histogram = Histogram((), 0.0)
    """How long it ran: its sum over the step's duration is the threads busy on average."""

    def frozen_per_request(self, route: str, culprit: str | None = None) -> float:
        """Mean seconds one request of ``route`` was frozen (by ``culprit``, or by anyone)."""
        requests = self.routes.get(route)
        if requests is None or not requests.count:
            return float("nan")
        by = self.frozen.get(route, {})
        seconds = sum(by.values()) if culprit is None else by.get(culprit, 0.0)
        return seconds / requests.count


def server_view(before: Samples, after: Samples, routes: Iterable[str]) -> ServerView:
    step = delta(before, after)
    frozen: dict[str, dict[str, float]] = defaultdict(dict)
    for (route, culprit), seconds in by_labels(step, FROZEN, ("route", "culprit")).items():
        frozen[route][culprit] = seconds
    return ServerView(
        lag=histogram(step, LAG),
        routes={route: histogram(step, REQUESTS, route=route) for route in routes},
        frozen={
            route: dict(sorted(c.items(), key=lambda kv: -kv[1])) for route, c in frozen.items()
        },
        stalls={
            (culprit, cause): n
            for (culprit, cause), n in by_labels(step, STALLS, ("culprit", "cause")).items()
        },
        busy={route: seconds for (route,), seconds in by_labels(step, BUSY, ("route",)).items()},
        pool_wait=histogram(step, POOL_WAIT, pool="default"),
        pool_run=histogram(step, POOL_RUN, pool="default"),
    )


@dataclass(frozen=True)
class StallLine:
    """Stalls of ``/demo/stalls`` that share a culprit, a cause and a top frame."""

    culprit: str
    cause: str
    frame: str
    seconds: float
    count: int


def stall_lines(events: Iterable[Mapping[str, object]], since: float) -> list[StallLine]:
    """The events that started after ``since`` (wall clock), grouped, most stalled first."""
    totals: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for event in events:
        started = event.get("started_at")
        if not isinstance(started, (int, float)) or started < since:
            continue
        duration = event.get("duration")
        key = (
            str(event.get("culprit")),
            str(event.get("cause")),
            str(event.get("top_frame") or "no stack sampled"),
        )
        entry = totals[key]
        entry[0] += float(duration) if isinstance(duration, (int, float)) else 0.0
        entry[1] += 1
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])
    return [StallLine(c, cause, f, s, int(n)) for (c, cause, f), (s, n) in ranked]
