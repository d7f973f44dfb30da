"""The app of the OpenTelemetry tests: FastAPI traced by OpenTelemetry's own instrumentation,
stallwatch with ``opentelemetry=True``, the SDK's in-memory exporter and reader.

The tracer and meter providers are the SDK's, set globally as an app sets them. What they
exported is served as JSON on ``/_test/spans`` and ``/_test/metrics`` (routes the tracing
leaves out, so that reading them adds no spans). The environment chooses the layout:

- ``SW_OTEL_POSITION``: ``inside`` (the default: ``FastAPIInstrumentor``, which wraps every
  middleware of the app, stallwatch's included), ``native`` (FastAPI's own telemetry, which
  does the same where FastAPI has it) or ``outside`` (stallwatch wraps
  ``OpenTelemetryMiddleware``, which wraps the app);
- ``SW_BASEHTTP``: ``inside`` puts a ``BaseHTTPMiddleware`` inside stallwatch, so the app
  runs in a child task of the request's;
- ``SW_OTEL_STACKS``: ``1`` sends stacks with the stall spans;
- ``SW_STALL_THRESHOLD``, ``SW_METRICS_PORT`` as in the other apps.

A request sent with a ``traceparent`` whose flags are ``00`` is not sampled (the default
sampler follows the remote parent): the tests use it for what must not be exported.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request, Response
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stallwatch
from stallwatch import StallwatchMiddleware

from . import common

SETTINGS = common.settings()
STATE = common.State()
POSITION = os.environ.get("SW_OTEL_POSITION", "inside")
EXCLUDED = "/_test/.*,/metrics"

SPANS = InMemorySpanExporter()
READER = InMemoryMetricReader()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(tracer_provider)
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))

NATIVE = "telemetry" in inspect.signature(FastAPI).parameters
"""This FastAPI traces requests itself once a tracer provider is set (``FastAPI(telemetry=)``)."""


def _test_only(scope: MutableMapping[str, Any]) -> bool:
    return bool(re.fullmatch(EXCLUDED.replace(",", "|"), scope.get("path", "")))


if not NATIVE:
    app = FastAPI()
elif POSITION == "outside":
    # Its spans would come second, under the OpenTelemetry middleware stallwatch wraps.
    app = FastAPI(telemetry={"tracing": False})
else:
    app = FastAPI(telemetry={"exclude": _test_only})


async def passthrough(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    return await call_next(request)


OPTIONS: dict[str, Any] = {
    "registry": SETTINGS.registry,
    "stall_threshold": SETTINGS.stall_threshold,
    "metrics_path": "/metrics",
    "metrics_port": SETTINGS.metrics_port,
    "opentelemetry": True,
    "opentelemetry_stacks": os.environ.get("SW_OTEL_STACKS") == "1",
}

if os.environ.get("SW_BASEHTTP") == "inside":
    app.middleware("http")(passthrough)  # added first: inside stallwatch

served: Any
if POSITION == "inside":
    app.add_middleware(StallwatchMiddleware, **OPTIONS)  # type: ignore[arg-type]
    FastAPIInstrumentor.instrument_app(app, excluded_urls=EXCLUDED)
    served = app
elif POSITION == "native":
    app.add_middleware(StallwatchMiddleware, **OPTIONS)  # type: ignore[arg-type]
    served = app
else:
    served = StallwatchMiddleware(OpenTelemetryMiddleware(app, excluded_urls=EXCLUDED), **OPTIONS)


async def child(seconds: float) -> float:
    await asyncio.sleep(0)
    return common.block_sleep(seconds)


@app.get("/block/direct")
async def direct(seconds: float) -> dict[str, float]:
    return {"blocked": common.block_sleep(seconds)}


@app.get("/block/task")
async def in_task(seconds: float) -> dict[str, float]:
    return {"blocked": await asyncio.create_task(child(seconds))}


@app.get("/items/{item_id}")
async def item(item_id: int, delay: float = 0.0) -> dict[str, int]:
    await common.wait_item(STATE, delay)
    return {"item_id": item_id}


@app.get("/at/block")
async def block_at(at: float, seconds: float) -> dict[str, float]:
    """Block once the loop's clock reads ``at``: see ``wait_until``."""
    await wait_until(at)
    return {"blocked": common.block_sleep(seconds)}


@app.get("/at/item")
async def item_at(at: float) -> dict[str, bool]:
    await wait_until(at)
    return {"done": True}


@app.get("/_test/clock")
async def clock() -> dict[str, float]:
    return {"now": asyncio.get_running_loop().time()}


GATES: dict[float, list[asyncio.Future[None]]] = {}


async def wait_until(at: float) -> None:
    """Resume at the loop time ``at``: requests waiting for the same ``at`` are woken by one
    callback, in the order they began to wait, so they run in the same iteration of the loop
    in that order, and the second ends inside the stall the first one causes."""
    loop = asyncio.get_running_loop()
    woken = loop.create_future()
    waiting = GATES.setdefault(at, [])
    if not waiting:
        loop.call_at(at, _open_gate, at)
    waiting.append(woken)
    await woken


def _open_gate(at: float) -> None:
    for woken in GATES.pop(at):
        woken.set_result(None)


@app.get("/block/callback")
async def block_in_callback(seconds: float) -> dict[str, bool]:
    """A callback is nobody's request: its stall is ``<background>``'s."""
    asyncio.get_running_loop().call_later(0.01, common.block_sleep, seconds)
    return {"scheduled": True}


@app.get("/_test/state")
async def state() -> dict[str, object]:
    monitor = stallwatch.get_monitor()
    stalls = []
    for event in monitor.recent_stalls() if monitor is not None else ():
        described = event.to_dict()
        context = event.trace
        described["span_id"] = f"{context.span_id:016x}" if context is not None else None  # type: ignore[attr-defined]
        stalls.append(described)
    gated = sum(len(waiting) for waiting in GATES.values())
    return {"waiting": STATE.waiting, "gated": gated, "stalls": stalls, "probe": common.probe()}


def _span(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "start": span.start_time,
        "end": span.end_time,
        "attributes": dict(span.attributes or {}),
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
    }


@app.get("/_test/spans")
async def spans() -> list[dict[str, Any]]:
    return [_span(span) for span in SPANS.get_finished_spans()]


@app.get("/_test/metrics")
async def both_metrics() -> dict[str, Any]:
    """Each stallwatch instrument's points (cumulative) and every Prometheus sample, read in
    one step of the loop: nothing can be counted between the two readings."""
    monitor = stallwatch.get_monitor()
    if monitor is not None:
        monitor.flush()  # what the middleware counted, as a scrape would see it
    prometheus = [
        {"name": sample.name, "labels": sample.labels, "value": sample.value}
        for family in SETTINGS.registry.collect()
        for sample in family.samples
    ]
    return {"otel": _otel_points(), "prometheus": prometheus}


def _otel_points() -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    data = READER.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            if scope.scope.name != "stallwatch":
                continue
            for metric in scope.metrics:
                points = found.setdefault(metric.name, [])
                for point in metric.data.data_points:
                    described: dict[str, Any] = {"attributes": dict(point.attributes or {})}
                    if isinstance(point, HistogramDataPoint):
                        described.update(
                            count=point.count,
                            sum=point.sum,
                            bounds=list(point.explicit_bounds),
                            buckets=list(point.bucket_counts),
                        )
                    elif isinstance(point, NumberDataPoint):
                        described["value"] = point.value
                    points.append(described)
    return found
