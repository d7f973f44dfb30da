"""stallwatch's metrics through the OpenTelemetry Metrics API, one instrument per Prometheus
metric, so that an app that exports over OTLP needs no Prometheus.

Names are dotted, units are seconds (``s``) or a count in braces, attributes are the
Prometheus labels under the same names. An OpenTelemetry-to-Prometheus exporter turns most of
them back into the Prometheus names (``stallwatch.request.frozen`` in ``s`` becomes
``stallwatch_request_frozen_seconds_total``); the table is in docs/deployment.md.

The four histograms are recorded where their Prometheus twins are observed, with the same
buckets (as the advisory boundaries: a View of the app's still wins). The counters and the
gauge are *observed*: their callbacks read the Prometheus metrics when the reader collects,
so they equal them by construction and cost nothing per request. Like every collection, they
see what the middleware has handed to prometheus-client (the heartbeat does so ten times a
second).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics as metrics_api
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
from prometheus_client.metrics import MetricWrapperBase

from ..metrics import EXECUTOR_BUCKETS, HOLD_BUCKETS, Metrics
from .traces import TRACER_NAME

LAG = "stallwatch.event_loop.lag"
STALLS = "stallwatch.event_loop.stalls"
STALL_DURATION = "stallwatch.event_loop.stall.duration"
STALL_IN_PROGRESS = "stallwatch.event_loop.stall.in_progress"
REQUEST_DURATION = "stallwatch.http.request.duration"
LOOP_HOLD = "stallwatch.route.loop.hold"
LOOP_BUSY = "stallwatch.route.loop.busy"
FROZEN_SECONDS = "stallwatch.request.frozen"
FROZEN_REQUESTS = "stallwatch.requests.frozen"
INTERNAL_ERRORS = "stallwatch.internal.errors"
EXECUTOR_QUEUE_WAIT = "stallwatch.executor.queue_wait"
EXECUTOR_RUN = "stallwatch.executor.run"
EXECUTOR_THREADS = "stallwatch.executor.threads"
EXECUTOR_WAITING = "stallwatch.executor.waiting"
REQUESTS_SHED = "stallwatch.requests.shed"

PROMETHEUS_NAMES: dict[str, str] = {
    LAG: "stallwatch_event_loop_lag_seconds",
    STALLS: "stallwatch_event_loop_stalls_total",
    STALL_DURATION: "stallwatch_event_loop_stall_seconds",
    STALL_IN_PROGRESS: "stallwatch_event_loop_stall_in_progress_seconds",
    REQUEST_DURATION: "stallwatch_http_request_duration_seconds",
    LOOP_HOLD: "stallwatch_route_loop_hold_seconds",
    LOOP_BUSY: "stallwatch_route_loop_busy_seconds_total",
    FROZEN_SECONDS: "stallwatch_request_frozen_seconds_total",
    FROZEN_REQUESTS: "stallwatch_requests_frozen_total",
    INTERNAL_ERRORS: "stallwatch_internal_errors_total",
    EXECUTOR_QUEUE_WAIT: "stallwatch_executor_queue_wait_seconds",
    EXECUTOR_RUN: "stallwatch_executor_run_seconds",
    EXECUTOR_THREADS: "stallwatch_executor_threads",
    EXECUTOR_WAITING: "stallwatch_executor_waiting",
    REQUESTS_SHED: "stallwatch_requests_shed_total",
}
"""Each instrument and the Prometheus metric it mirrors (docs and tests read this)."""


def _observed(
    metric: MetricWrapperBase, suffix: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """A callback that reports every child of a prometheus-client counter or gauge."""

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for family in metric.collect():
            wanted = family.name + suffix
            for sample in family.samples:
                if sample.name == wanted:
                    observations.append(Observation(sample.value, dict(sample.labels)))
        return observations

    return callback


@dataclass(frozen=True, slots=True)
class Meters:
    """The synchronous instruments; the observed ones live in the meter's callbacks."""

    lag: Histogram
    stall_duration: Histogram
    request_duration: Histogram
    loop_hold: Histogram
    executor_queue_wait: Histogram
    executor_run: Histogram


def _create(metrics: Metrics, meter: Meter) -> Meters:
    def histogram(name: str, description: str, buckets: tuple[float, ...]) -> Histogram:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
        )

    for name, unit, description, metric in (
        (STALLS, "{stall}", "Stretches in which the event loop did not poll for longer than "
         "the threshold.", metrics.stalls),
        (LOOP_BUSY, "s", "Seconds requests of a route held the event loop, all steps "
         "together.", metrics.loop_busy),
        (FROZEN_SECONDS, "s", "Seconds requests of a route waited while other work held the "
         "event loop, by who held it.", metrics.frozen_seconds),
        (FROZEN_REQUESTS, "{request}", "Requests of a route that were frozen for at least the "
         "floor by a culprit.", metrics.frozen_requests),
        (INTERNAL_ERRORS, "{error}", "Errors inside stallwatch, contained and never raised "
         "into the app.", metrics.internal_errors),
        (REQUESTS_SHED, "{request}", "New requests answered 503 while the event loop lagged "
         "(shed_lag).", metrics.requests_shed),
    ):  # fmt: skip
        meter.create_observable_counter(
            name, callbacks=[_observed(metric, "_total")], unit=unit, description=description
        )
    for name, unit, description, gauge in (
        (STALL_IN_PROGRESS, "s", "How long the event loop has been stalled right now (0 when "
         "it is not).", metrics.stall_in_progress),
        (EXECUTOR_THREADS, "{thread}", "A thread pool's threads, busy or idle.",
         metrics.executor_threads),
        (EXECUTOR_WAITING, "{job}", "Work submitted to a thread pool that has not started.",
         metrics.executor_waiting),
    ):  # fmt: skip
        meter.create_observable_gauge(
            name, callbacks=[_observed(gauge, "")], unit=unit, description=description
        )
    return Meters(
        lag=histogram(
            LAG,
            "How late the event loop ran a callback that was due, beyond its schedule.",
            metrics.lag_buckets,
        ),
        stall_duration=histogram(
            STALL_DURATION, "Duration of each event-loop stall.", metrics.lag_buckets
        ),
        request_duration=histogram(
            REQUEST_DURATION,
            "Request latency from the moment the event loop read the request to its end.",
            metrics.request_buckets,
        ),
        loop_hold=histogram(
            LOOP_HOLD, "Longest single step each request held the event loop for.", HOLD_BUCKETS
        ),
        executor_queue_wait=histogram(
            EXECUTOR_QUEUE_WAIT,
            "Seconds work waited in a thread pool, from submission to its start.",
            EXECUTOR_BUCKETS,
        ),
        executor_run=histogram(
            EXECUTOR_RUN, "Seconds work ran in a thread pool's thread.", EXECUTOR_BUCKETS
        ),
    )


class Teed:
    """A labelled Prometheus histogram whose children also record into an OpenTelemetry
    histogram, with the labels as attributes: for observations made where no OpenTelemetry
    code runs (the pools' threads observe through ``.labels(...).observe``)."""

    def __init__(self, labelled: Any, histogram: Histogram, names: tuple[str, ...]) -> None:
        self._labelled = labelled
        self._histogram = histogram
        self._names = names

    def labels(self, *values: str) -> _TeedChild:
        return _TeedChild(
            self._labelled.labels(*values),
            self._histogram,
            dict(zip(self._names, values, strict=True)),
        )


class _TeedChild:
    __slots__ = ("_attributes", "_child", "_histogram")

    def __init__(self, child: Any, histogram: Histogram, attributes: dict[str, str]) -> None:
        self._child = child
        self._histogram = histogram
        self._attributes = attributes

    def observe(self, amount: float) -> None:
        self._child.observe(amount)
        self._histogram.record(amount, self._attributes)


_lock = threading.Lock()
_known: dict[tuple[int, int], tuple[Metrics, MeterProvider | None, Meters]] = {}


def meters_for(metrics: Metrics, provider: MeterProvider | None = None) -> Meters:
    """The instruments that mirror ``metrics`` on ``provider`` (the global one when None),
    created once: a second monitor or middleware on the same registry must not register
    the observed counters twice, or every value would be reported twice."""
    key = (id(metrics), id(provider))
    with _lock:
        known = _known.get(key)
        if known is not None and known[0] is metrics and known[1] is provider:
            return known[2]
        meter = (
            metrics_api.get_meter(TRACER_NAME)
            if provider is None
            else provider.get_meter(TRACER_NAME)
        )
        meters = _create(metrics, meter)
        _known[key] = (metrics, provider, meters)
        return meters
