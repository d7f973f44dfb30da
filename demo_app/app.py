"""The demo service: a FastAPI app whose cache route blocks the event loop, until you flip it.

``GET /cache/{key}`` reads a SQLite table in one of two modes (see ``cache.py``); ``/ping`` and
``/items/{item_id}`` never block, yet in blocking mode their tail latency is wrecked by the
cache route, and stallwatch (mounted below) says so: the culprit route, its line, and the
seconds it froze every other route. ``POST /demo/mode`` switches modes live.

``create_app(...)`` builds it; the module-level ``app`` is configured from the environment so
that ``uvicorn demo_app.app:app`` (and gunicorn) can serve it directly:

- ``DEMO_MODE``: ``blocking`` (default) or ``executor``
- ``DEMO_DB``: path of the SQLite file (default: a temporary file, removed at shutdown)
- ``DEMO_EXECUTOR_THREADS``: size of the executor mode's thread pool (default 1)
- ``DEMO_SEED_ROWS``: rows seeded, i.e. the cost of one read (default 100000, about 2 ms)
- ``DEMO_STALL_THRESHOLD``: stallwatch's stall threshold in seconds (default 0.02)
- ``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER`` (``console``, ``otlp``): OpenTelemetry on,
  with those exporters (``otel.py``)
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from pydantic import BaseModel

import stallwatch
from stallwatch import StallwatchMiddleware

from .cache import (
    DEFAULT_EXECUTOR_THREADS,
    DEFAULT_SEED_ROWS,
    MODES,
    Mode,
    SqliteCache,
    read_blocking,
    read_in_executor,
)
from .front import front_page
from .otel import configure, fastapi_options, instrument

__all__ = ["DEFAULT_EXECUTOR_THREADS", "MODES", "Mode", "app", "create_app", "settings_from_env"]

REPORT_PATH = "/_stallwatch"
"""Where stallwatch's middleware serves its stall report page (to loopback clients only)."""


class ModeChange(BaseModel):
    mode: Mode


class DemoState:
    """The live mode. Each request reads it once when it starts, so a switch is atomic and
    applies to the requests that start after it; requests in flight finish as they began."""

    def __init__(self, mode: Mode, gauge: Gauge) -> None:
        self._gauge = gauge
        self.mode: Mode = mode

    def set(self, mode: Mode) -> None:
        self.mode = mode
        for name in MODES:
            self._gauge.labels(mode=name).set(1 if name == mode else 0)


_gauges: dict[int, tuple[CollectorRegistry, Gauge]] = {}
_gauges_lock = threading.Lock()


def mode_gauge(registry: CollectorRegistry | None = None) -> Gauge:
    """``demo_cache_mode{mode}`` on stallwatch's registry, created once per registry.

    ``livemax`` so that prometheus-client's multiprocess mode reports it too (1 for a mode any
    live worker is in).
    """
    registry = REGISTRY if registry is None else registry
    with _gauges_lock:
        known = _gauges.get(id(registry))
        if known is not None and known[0] is registry:
            return known[1]
        gauge = Gauge(
            "demo_cache_mode",
            "The demo's cache mode: 1 for the current one, 0 for the other.",
            ["mode"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        _gauges[id(registry)] = (registry, gauge)
        return gauge


def create_app(
    *,
    mode: Mode = "blocking",
    db: str | None = None,
    executor_threads: int = DEFAULT_EXECUTOR_THREADS,
    seed_rows: int = DEFAULT_SEED_ROWS,
    stall_threshold: float = 0.020,
    registry: CollectorRegistry | None = None,
    on_ready: Callable[[SqliteCache], None] | None = None,
) -> FastAPI:
    """The demo app; the SQLite file is created and seeded at startup, closed at shutdown."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    cache = SqliteCache(db, seed_rows=seed_rows, executor_threads=executor_threads)
    state = DemoState(mode, mode_gauge(registry))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Seeding takes a moment of SQLite work: off the loop, or it would be the first stall.
        await asyncio.to_thread(cache.open)
        # The pool is the loop's default executor, as in an app that sized it: what
        # run_in_executor(None, ...) and asyncio.to_thread use, and stallwatch's "default" pool.
        if cache.pool is not None:
            asyncio.get_running_loop().set_default_executor(cache.pool)
        state.set(state.mode)  # the gauge starts at startup, not when the module is imported
        if on_ready is not None:
            on_ready(cache)
        try:
            yield
        finally:
            # Not on the pool it shuts down: a thread of its own.
            with ThreadPoolExecutor(1, thread_name_prefix="demo-close") as closer:
                await asyncio.get_running_loop().run_in_executor(closer, cache.close)

    # OpenTelemetry when OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER ask for it (otel.py).
    telemetry = configure()
    untraced = ("/metrics", REPORT_PATH)
    app = FastAPI(
        title="stallwatch demo", lifespan=lifespan, **fastapi_options(telemetry, untraced)
    )
    app.state.demo = state
    app.state.cache = cache

    @app.get("/cache/{key}")
    async def get_cache(key: str) -> dict[str, str]:
        if state.mode == "blocking":
            value = read_blocking(cache, key)  # the bug: a sync call inside async def
        else:
            value = await read_in_executor(cache, key)  # the fix, with its own cost
        if value is None:
            raise HTTPException(404, f"no cache entry for {key!r}")
        return {"key": key, "value": value}

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ping": "pong"}

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, Any]:
        await asyncio.sleep(0.001)  # a little awaited work, like a call to another service
        return {"item_id": item_id, "name": f"item {item_id}"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def front(request: Request) -> HTMLResponse:
        page = front_page(
            mode=state.mode,
            cache=cache,
            report_path=REPORT_PATH,
            base_url=str(request.base_url).rstrip("/"),
            package=__package__ or "demo_app",
        )
        # Never cached: the page shows the live mode.
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    @app.get("/demo/mode")
    async def get_mode() -> dict[str, str]:
        return {"mode": state.mode}

    @app.get("/demo/info")
    async def info() -> dict[str, Any]:
        # What the load generator calibrates from, and labels its table with.
        return {
            "mode": state.mode,
            "read_seconds": cache.read_seconds,
            "seed_rows": cache.seed_rows,
            "executor_threads": cache.executor_threads,
            "report_path": REPORT_PATH,
        }

    @app.post("/demo/mode")
    async def set_mode(change: ModeChange) -> dict[str, str]:
        state.set(change.mode)
        return {"mode": state.mode}

    @app.exception_handler(RequestValidationError)
    async def explain_bad_mode(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Any unusable body for the toggle (a wrong value, no value, no JSON) gets a 422 that
        # names the allowed values; the mode stays as it was.
        if request.url.path != "/demo/mode":
            return await request_validation_exception_handler(request, exc)
        allowed = " or ".join(repr(m) for m in MODES)
        return JSONResponse(
            {
                "detail": f'mode must be {allowed}, e.g. {{"mode": "executor"}}',
                "allowed": list(MODES),
                "errors": jsonable_encoder(exc.errors()),
            },
            status_code=422,
        )

    @app.get("/demo/stalls", response_class=JSONResponse)
    async def stalls() -> JSONResponse:
        # A JSONResponse straight away: FastAPI's own encoder would spend tens of milliseconds
        # on a hundred events with their stacks, on the loop, and be a stall of its own.
        monitor = stallwatch.get_monitor()
        events = [] if monitor is None else monitor.recent_stalls()
        return JSONResponse([event.to_dict() for event in events])

    app.add_middleware(
        StallwatchMiddleware,  # type: ignore[arg-type]  # stallwatch's ASGI types, not Starlette's
        registry=registry,
        stall_threshold=stall_threshold,
        metrics_path="/metrics",
        report=True,
        report_path=REPORT_PATH,
        # Installed from a wheel the demo lives in site-packages under stallwatch/, both of
        # which stallwatch skips when it looks for the application's line: not this package.
        in_app_include=(__package__ or "demo_app",),
        opentelemetry=telemetry,
    )
    if telemetry:
        instrument(app, untraced)
    return app


def settings_from_env(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``create_app`` keyword arguments from ``DEMO_*`` variables; a bad value raises ValueError."""
    settings: dict[str, Any] = {}
    mode = env.get("DEMO_MODE")
    if mode:
        if mode not in MODES:
            raise ValueError(f"DEMO_MODE must be one of {', '.join(MODES)}, got {mode!r}")
        settings["mode"] = mode
    if env.get("DEMO_DB"):
        settings["db"] = env["DEMO_DB"]
    for name, key, kind in (
        ("DEMO_EXECUTOR_THREADS", "executor_threads", int),
        ("DEMO_SEED_ROWS", "seed_rows", int),
        ("DEMO_STALL_THRESHOLD", "stall_threshold", float),
    ):
        raw = env.get(name)
        if raw:
            try:
                settings[key] = kind(raw)
            except ValueError:
                raise ValueError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    return settings


app = create_app(**settings_from_env())
