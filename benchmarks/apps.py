"""The applications the overhead benchmark serves: two routes, instrumented many ways.

One server process serves one *app*: a framework (Starlette or FastAPI), with or without a
pass-through ``BaseHTTPMiddleware`` of the user's, and one *variant* of instrumentation. The
driver picks them through the environment and uvicorn's factory hook::

    BENCH_FRAMEWORK=fastapi BENCH_VARIANT=stallwatch BENCH_BHM=1 \
        uvicorn --factory benchmarks.apps:from_env

so that a server builds and registers only its own instrumentation. Every app has the same
routes in the same order, so routing costs the same in all: ``/`` (a JSON answer, no work),
``/work`` (about 200 us of Python work that allocates, as a handler building a response
does), then the driver's own ``/_probe`` and ``/_gc``, never measured; the exporters add
``/metrics`` after them (stallwatch serves it from its middleware).

``BENCH_GCSTATS=1`` adds a ``gc.callbacks`` hook that counts collections per generation and
times them, read from ``/_gc`` (and ``/_gc?objects=1`` counts the tracked objects by type).
It is off in the timed runs: it is itself a callback on every collection.

``NoopMiddleware``, ``StepTimerMiddleware`` and ``_routes`` are what ``benchmarks/components.py``
builds on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from time import perf_counter
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stallwatch import LoopMonitor, StallwatchMiddleware, get_monitor

FRAMEWORKS = ("starlette", "fastapi")
VARIANTS = (
    "bare",
    "noop",
    "monitor",
    "stallwatch",
    "loopguard",
    "instrumentator",
    "exporter",
)
"""``monitor`` is the bare app on a loop watched by ``LoopMonitor`` alone (no middleware):
the loop-level hooks' share of stallwatch's cost."""
PROTOTYPES = (
    "sw-pure",
    "sw-release",
    "sw-gcfreeze",
    "sw-nogcwatch",
    "sw-noprofile",
    "sw-floor20",
    "sw-noattrib",
    "sw-nofrozen",
    "sw-nometrics",
    "sw-nowatchdog",
    "sw-nowrap",
    "sw-nosendwrap",
)
"""stallwatch with one change applied from outside the package, to measure a fix before it
is made (``benchmarks/gc_tail.py``): a finished request's span lets go of its scope, coroutine
and ``send`` (the timeline's ``ran`` list keeps finished spans until the loop polls);
``gc.freeze()`` once the app is built; no ``gc.callbacks`` hook; the timeline's snapshot ring
at 64 instead of 4096; ``floor=0.02``. They reach into stallwatch's insides (of the committed
core, ``--at``); a prototype whose target is gone raises at start-up rather than measure
nothing."""

WORK_ROWS = 850
"""About 200 us of CPython 3.11 on the benchmark VM: 850 small dicts built and summed."""


def work(rows: int = WORK_ROWS) -> int:
    table: list[dict[str, Any]] = [{"id": i, "value": i * 3, "name": "row"} for i in range(rows)]
    total = 0
    for row in table:
        if row["value"] % 2:
            total += row["value"]
        else:
            total -= row["id"]
    return total


# -- the driver's view into the server ------------------------------------------------------


class GCStats:
    """Collections per generation and their durations, from inside the server process."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self._began = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = perf_counter()
            return
        took = perf_counter() - self._began
        gen = info["generation"]
        self.count[gen] += 1
        self.seconds[gen] += took
        self.collected[gen] += info["collected"]
        if took > self.longest[gen]:
            self.longest[gen] = took

    def snapshot(self, objects: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "count": list(self.count),
            "seconds": list(self.seconds),
            "longest": list(self.longest),
            "collected": list(self.collected),
            "pending": list(gc.get_count()),
            "threshold": list(gc.get_threshold()),
        }
        if objects:
            every = gc.get_objects()
            data["tracked"] = len(every)
            data["by_generation"] = [len(gc.get_objects(g)) for g in range(3)]
            kinds = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in every)
            data["types"] = dict(kinds.most_common(40))
            data["stallwatch_types"] = {
                k: v for k, v in kinds.items() if k.startswith("stallwatch.")
            }
            del every
        return data


GC_STATS: GCStats | None = None
if os.environ.get("BENCH_GCSTATS") == "1":
    GC_STATS = GCStats()
    gc.callbacks.append(GC_STATS.callback)


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"message": "hello"})


async def worked(request: Request) -> JSONResponse:
    return JSONResponse({"total": work()})


async def probe(request: Request) -> JSONResponse:
    """Tells the driver what it measured: uvloop or not, and the probe stallwatch chose."""
    monitor = get_monitor()
    return JSONResponse(
        {
            "loop": type(asyncio.get_running_loop()).__module__,
            "probe": monitor.probe if monitor is not None else None,
            "pid": os.getpid(),
        }
    )


async def gc_view(request: Request) -> JSONResponse:
    if GC_STATS is None:
        return JSONResponse({"error": "start the server with BENCH_GCSTATS=1"}, status_code=404)
    return JSONResponse(GC_STATS.snapshot(request.query_params.get("objects") == "1"))


def _routes() -> list[Route]:
    return [
        Route("/", hello),
        Route("/work", worked),
        Route("/_probe", probe),
        Route("/_gc", gc_view),
    ]


# -- middleware of the user's, and the cheapest there is -------------------------------------


class NoopMiddleware:
    """The cheapest pure-ASGI middleware there is: the floor any middleware pays."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


_TIMED: contextvars.ContextVar[_TimedRequest | None] = contextvars.ContextVar(
    "bench_timed", default=None
)


class _TimedRequest:
    """The least a per-request loop timer keeps: the request's status and its loop time."""

    __slots__ = ("_coro", "_send", "_step", "busy", "longest", "start", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.start = time.perf_counter()
        self.busy = 0.0
        self.longest = 0.0
        self.status = 0

    def wrap(self, coro: Any) -> _TimedRequest:
        """Time the steps of ``coro`` (the app's coroutine); returns self, to await."""
        self._coro = coro
        self._step = coro.send
        return self

    def asgi_send(self, message: Message) -> Awaitable[None]:
        if not self.status and message["type"] == "http.response.start":
            self.status = message["status"]
        return self._send(message)

    def __await__(self) -> Generator[Any, Any, Any]:
        return self  # type: ignore[return-value]  # an iterator with send and throw

    def __iter__(self) -> _TimedRequest:
        return self

    def send(self, value: Any = None) -> Any:
        began = time.perf_counter()
        try:
            return self._step(value)
        finally:
            seconds = time.perf_counter() - began
            self.busy += seconds
            if seconds > self.longest:
                self.longest = seconds

    __next__ = send

    def throw(self, *args: Any) -> Any:
        return self._coro.throw(*args)


class StepTimerMiddleware:
    """The floor of any per-request loop timer written in Python, for reference: a context
    variable that the request's tasks inherit, a record of the request that takes its status
    from ``send``, and each step of its coroutine timed. No route, no loop watching, no
    nested steps, no metrics: what stallwatch pays beyond this is for those."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Totals, not a list: a record kept per request would be the collector's work too.
        self.requests = 0
        self.errors = 0
        self.seconds = 0.0
        self.busy = 0.0
        self.longest = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        timed = _TimedRequest(send)
        token = _TIMED.set(timed)
        try:
            await timed.wrap(self.app(scope, receive, timed.asgi_send))
        finally:
            _TIMED.reset(token)
            self.requests += 1
            if timed.status >= 500 or not timed.status:
                self.errors += 1
            self.seconds += time.perf_counter() - timed.start
            self.busy += timed.busy
            if timed.longest > self.longest:
                self.longest = timed.longest


class PassThrough(BaseHTTPMiddleware):
    """What many apps have: a ``BaseHTTPMiddleware`` that only calls on. It runs the rest of
    the app in a task of its own and streams the body through a memory channel."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)


# -- building one app ----------------------------------------------------------------------


def _monitored_lifespan(app: Any) -> contextlib.AbstractAsyncContextManager[None]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with LoopMonitor():
            yield

    return lifespan(app)


def _base(framework: str, bhm: bool, lifespan: Any = None) -> Any:
    user_middleware = [Middleware(PassThrough)] if bhm else []
    if framework == "fastapi":
        from fastapi import FastAPI

        fast = FastAPI(lifespan=lifespan, middleware=user_middleware, openapi_url=None)

        # FastAPI's own way: a dict return value, serialised by FastAPI.
        @fast.get("/")
        async def fast_hello() -> dict[str, str]:
            return {"message": "hello"}

        @fast.get("/work")
        async def fast_work() -> dict[str, int]:
            return {"total": work()}

        fast.add_route("/_probe", probe)
        fast.add_route("/_gc", gc_view)
        return fast
    if framework != "starlette":
        raise ValueError(f"unknown framework {framework!r}; choose from {FRAMEWORKS}")
    return Starlette(routes=_routes(), middleware=user_middleware, lifespan=lifespan)


def _metrics_route(app: Any) -> None:
    from prometheus_client import make_asgi_app

    app.mount("/metrics", make_asgi_app())


def _stallwatch(app: Any, **options: Any) -> Any:
    # Everything on: monitor, step timing, frozen time, all metrics, and /metrics served.
    app.add_middleware(StallwatchMiddleware, metrics_path="/metrics", **options)
    return app


def _prototype(variant: str, framework: str, bhm: bool) -> Any:
    # sw-pure: the server runs with STALLWATCH_PURE=1 (overhead.py sets it): the Python step
    # accounting where the compiled one is built (stallwatch/loop/steps.py).
    if variant == "sw-floor20":
        return _stallwatch(_base(framework, bhm), floor=0.02)
    if variant == "sw-nogcwatch":
        from stallwatch.stall import gcwatch

        # acquire() appends the hook; make it a no-op so no collection calls into stallwatch.
        gcwatch.GC_WATCH.acquire = lambda: None  # type: ignore[method-assign]
        gcwatch.GC_WATCH.release = lambda: None  # type: ignore[method-assign]
    if variant == "sw-release":
        from stallwatch import middleware

        close = middleware.StallwatchMiddleware._close

        def close_and_release(self: Any, span: Any, end: float) -> None:
            close(self, span, end)
            # The span may wait in timeline.ran until the stretch ends; what it still needs
            # there is its route and its times, not the request's objects.
            span.scope = span._coro = span._send = None
            with contextlib.suppress(AttributeError):  # cores where a span is its own Steps
                if span.span is span:
                    span.span = None  # the reference cycle that only the collector frees

        middleware.StallwatchMiddleware._close = close_and_release  # type: ignore[method-assign]
    if variant == "sw-noprofile":
        return _stallwatch(_base(framework, bhm), profile=False)
    if variant == "sw-noattrib":
        from stallwatch.request import tasks

        # No call_soon in front of the loop's, no task factory: child tasks go unattributed.
        tasks.TaskAttribution.install = lambda self: None  # type: ignore[method-assign]
        tasks.TaskAttribution.uninstall = lambda self: None  # type: ignore[method-assign]
    if variant == "sw-nofrozen":
        from stallwatch.loop import timeline

        timeline.Timeline.frozen = lambda self, span, end: None  # type: ignore[method-assign]
    if variant == "sw-nowatchdog":
        from stallwatch.stall import watchdog

        # No watchdog thread: nothing takes the GIL from the loop thread to look or sample.
        watchdog.Watchdog.start = lambda self: None  # type: ignore[method-assign]
    if variant == "sw-nowrap":
        from stallwatch.request import spans

        # The app awaited as it is: its own steps untimed (tasks it starts still are).
        spans.RequestSpan.wrap = lambda self, awaitable: awaitable  # type: ignore[method-assign]
    if variant == "sw-nosendwrap":
        from stallwatch.request import spans

        # The server's send handed to the app as it is: no status seen (every request a 500).
        spans.RequestSpan.asgi_send = property(lambda self: self._send)  # type: ignore[assignment]
    if variant == "sw-nometrics":
        from stallwatch.request import tally

        tally.RequestMetrics.add = lambda self, *args: None  # type: ignore[method-assign]
    app = _stallwatch(_base(framework, bhm))
    if variant == "sw-gcfreeze":
        gc.collect()
        gc.freeze()  # the app's import-time objects leave the collector's view
    return app


TRACED = ("traced", "traced-sw", "traced-sw-otel")
"""OpenTelemetry's ASGI middleware outermost, every request sampled by an SDK tracer provider
(no exporter: the cost of tracing itself): alone, with stallwatch inside it
(``opentelemetry=False``), and with stallwatch's OpenTelemetry on (issue 18)."""


def _traced(app: Any) -> Any:
    from opentelemetry import trace
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())
    return OpenTelemetryMiddleware(app)


def build(framework: str, variant: str, *, bhm: bool = False) -> Any:
    """The ASGI app of one server: ``framework`` with ``variant``'s instrumentation."""
    if variant in TRACED:
        app = _base(framework, bhm)
        if variant != "traced":
            _stallwatch(app, opentelemetry=variant == "traced-sw-otel")
        return _traced(app)
    if variant in PROTOTYPES:
        return _prototype(variant, framework, bhm)
    if variant == "monitor":
        return _base(framework, bhm, _monitored_lifespan)
    app = _base(framework, bhm)
    if variant == "bare":
        return app
    if variant == "noop":
        app.add_middleware(NoopMiddleware)
    elif variant == "timer":
        app.add_middleware(StepTimerMiddleware)
    elif variant == "stallwatch":
        _stallwatch(app)
    elif variant == "loopguard":
        from fastapi_loopguard import LoopGuardConfig, LoopGuardMiddleware

        # Its documented production set-up (silent logging), with its Prometheus metrics on,
        # served on /metrics like the others'.
        config = LoopGuardConfig(enforcement_mode="log", prometheus_enabled=True)
        app.add_middleware(LoopGuardMiddleware, config=config)
        _metrics_route(app)
    elif variant == "instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator().instrument(app).expose(app)  # its defaults, as its README shows
    elif variant == "exporter":
        from starlette_exporter import PrometheusMiddleware, handle_metrics

        app.add_middleware(PrometheusMiddleware)
        app.add_route("/metrics", handle_metrics)
    else:
        raise ValueError(
            f"unknown variant {variant!r}; choose from {VARIANTS + PROTOTYPES + TRACED}"
        )
    return app


def from_env() -> Any:
    """uvicorn's factory: ``BENCH_FRAMEWORK``, ``BENCH_VARIANT``, ``BENCH_BHM`` (0 or 1);
    ``BENCH_INSITU=1`` adds ``benchmarks/insitu.py``'s timers."""
    app = build(
        os.environ.get("BENCH_FRAMEWORK", "starlette"),
        os.environ.get("BENCH_VARIANT", "bare"),
        bhm=os.environ.get("BENCH_BHM") == "1",
    )
    if os.environ.get("BENCH_INSITU") == "1":
        from .insitu import instrument

        app = instrument(app)
    return app


# The factories of earlier versions (``--factory benchmarks.apps:stallwatch``): Starlette.
def _factory(variant: str) -> Callable[[], Any]:
    def factory() -> Any:
        return build("starlette", variant)

    factory.__name__ = variant
    return factory


bare = _factory("bare")
noop = _factory("noop")
monitor = _factory("monitor")
stallwatch = _factory("stallwatch")
instrumentator = _factory("instrumentator")
exporter = _factory("exporter")
loopguard = _factory("loopguard")
