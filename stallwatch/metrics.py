"""Every metric stallwatch exports, defined once per registry.

Metrics are created the first time a monitor or middleware asks for a registry and reused
after that, so building a second app (tests, reloads) never trips prometheus-client's
duplicate-registration error. Label children are cached by the callers: ``.labels()`` costs
more than the observation itself.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
"""0.5 ms to 10 s in a 1-2-5 series: fine enough to read a p99, few enough to aggregate."""

REQUEST_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

HOLD_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
"""A step of an ``await``-ing handler takes tens of microseconds; a blocking one, milliseconds."""


EXECUTOR_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
"""A free thread takes work within ~100 us; a saturated pool makes it wait seconds."""


def validate_buckets(name: str, buckets: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(b) for b in buckets)
    if not values or any(b <= 0 for b in values) or list(values) != sorted(set(values)):
        raise ValueError(f"{name} must be positive, strictly increasing numbers, got {buckets!r}")
    return values


@dataclass(frozen=True)
class Metrics:
    lag: Histogram
    stalls: Counter
    stall_seconds: Histogram
    stall_in_progress: Gauge
    internal_errors: Counter
    request_duration: Histogram
    loop_hold: Histogram
    loop_busy: Counter
    frozen_seconds: Counter
    frozen_requests: Counter
    executor_queue_wait: Histogram
    executor_run: Histogram
    executor_threads: Gauge
    executor_waiting: Gauge
    requests_shed: Counter
    lag_buckets: tuple[float, ...]
    request_buckets: tuple[float, ...]


class MetricsTaken(ValueError):
    """The registry holds another collector under one of stallwatch's metric names."""


_lock = threading.Lock()
_by_registry: dict[int, tuple[CollectorRegistry, Metrics]] = {}


def metrics_for(
    registry: CollectorRegistry | None = None,
    *,
    lag_buckets: Sequence[float] | None = None,
    request_buckets: Sequence[float] | None = None,
) -> Metrics:
    """The metrics of ``registry`` (the default one when None), created on first use.

    Asking again with other buckets is an error: a histogram's buckets cannot change once
    it has been scraped.
    """
    registry = REGISTRY if registry is None else registry
    lag = LAG_BUCKETS if lag_buckets is None else validate_buckets("lag_buckets", lag_buckets)
    req = (
        REQUEST_BUCKETS
        if request_buckets is None
        else validate_buckets("request_buckets", request_buckets)
    )
    with _lock:
        known = _by_registry.get(id(registry))
        if known is not None and known[0] is registry:
            metrics = known[1]
            if lag_buckets is not None and metrics.lag_buckets != lag:
                raise ValueError(
                    f"lag_buckets {lag!r} differ from {metrics.lag_buckets!r}, "
                    "already registered on this registry"
                )
            if request_buckets is not None and metrics.request_buckets != req:
                raise ValueError(
                    f"request_buckets {req!r} differ from {metrics.request_buckets!r}, "
                    "already registered on this registry"
                )
            return metrics
        metrics = _create(registry, lag, req)
        _by_registry[id(registry)] = (registry, metrics)
        return metrics


def _create(registry: CollectorRegistry, lag: tuple[float, ...], req: tuple[float, ...]) -> Metrics:
    metrics = unregistered_metrics(lag, req)
    collectors = [
        getattr(metrics, f.name) for f in fields(metrics) if not f.name.endswith("_buckets")
    ]
    registered = []
    try:
        for collector in collectors:
            registry.register(collector)
            registered.append(collector)
    except ValueError as exc:  # a name taken by another collector in this registry
        for collector in registered:
            registry.unregister(collector)
        raise MetricsTaken(f"stallwatch cannot register its metrics: {exc}") from None
    return metrics


# Each metric is made unregistered (``_create`` registers them all or none); the label names
# follow the help text, as prometheus-client's ``labelnames`` do.


def _counter(name: str, documentation: str, *labelnames: str) -> Counter:
    return Counter(name, documentation, labelnames, registry=None)


def _histogram(
    name: str, documentation: str, *labelnames: str, buckets: Sequence[float]
) -> Histogram:
    return Histogram(name, documentation, labelnames, registry=None, buckets=buckets)


def _gauge(
    name: str,
    documentation: str,
    *labelnames: str,
    multiprocess_mode: Literal["livemax", "livesum"],
) -> Gauge:
    return Gauge(
        name, documentation, labelnames, registry=None, multiprocess_mode=multiprocess_mode
    )


def unregistered_metrics(lag: tuple[float, ...], req: tuple[float, ...]) -> Metrics:
    """Every metric, not yet registered anywhere: registering is all or nothing."""
    return Metrics(
        lag=_histogram(
            "stallwatch_event_loop_lag_seconds",
            "How late the event loop ran a callback that was due, beyond its schedule.",
            buckets=lag,
        ),
        stalls=_counter(
            "stallwatch_event_loop_stalls",
            "Stretches in which the event loop did not poll for longer than the threshold.",
            "culprit",
            "cause",
        ),
        stall_seconds=_histogram(
            "stallwatch_event_loop_stall_seconds",
            "Duration of each event-loop stall.",
            "culprit",
            "cause",
            buckets=lag,
        ),
        stall_in_progress=_gauge(
            "stallwatch_event_loop_stall_in_progress_seconds",
            "How long the event loop has been stalled right now (0 when it is not).",
            multiprocess_mode="livemax",
        ),
        internal_errors=_counter(
            "stallwatch_internal_errors",
            "Errors inside stallwatch, contained and never raised into the app.",
            "component",
        ),
        request_duration=_histogram(
            "stallwatch_http_request_duration_seconds",
            "Request latency from the moment the event loop read the request to its end.",
            "method",
            "route",
            "status",
            buckets=req,
        ),
        loop_hold=_histogram(
            "stallwatch_route_loop_hold_seconds",
            "Longest single step each request held the event loop for.",
            "route",
            buckets=HOLD_BUCKETS,
        ),
        loop_busy=_counter(
            "stallwatch_route_loop_busy_seconds",
            "Seconds requests of a route held the event loop, all steps together.",
            "route",
        ),
        frozen_seconds=_counter(
            "stallwatch_request_frozen_seconds",
            "Seconds requests of a route waited while other work held the event loop, "
            "by who held it.",
            "route",
            "culprit",
        ),
        frozen_requests=_counter(
            "stallwatch_requests_frozen",
            "Requests of a route that were frozen for at least the floor by a culprit.",
            "route",
            "culprit",
        ),
        executor_queue_wait=_histogram(
            "stallwatch_executor_queue_wait_seconds",
            "Seconds work handed to a thread pool waited to start, by the route that handed it.",
            "pool",
            "route",
            buckets=EXECUTOR_BUCKETS,
        ),
        executor_run=_histogram(
            "stallwatch_executor_run_seconds",
            "Seconds work handed to a thread pool ran, by the route that handed it.",
            "pool",
            "route",
            buckets=EXECUTOR_BUCKETS,
        ),
        executor_threads=_gauge(
            "stallwatch_executor_threads",
            "A thread pool's size: threads running work (busy) and the rest (idle).",
            "pool",
            "state",
            multiprocess_mode="livesum",
        ),
        executor_waiting=_gauge(
            "stallwatch_executor_waiting",
            "Work handed to a thread pool that has not started yet.",
            "pool",
            multiprocess_mode="livesum",
        ),
        requests_shed=_counter(
            "stallwatch_requests_shed",
            "New requests answered 503 before the app saw them, while the loop lagged.",
            "route",
        ),
        lag_buckets=lag,
        request_buckets=req,
    )
