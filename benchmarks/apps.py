"""The applications the overhead benchmark serves: one JSON route, instrumented five ways.

Each variant is a factory (``uvicorn --factory benchmarks.apps:<variant>``) so that a server
process builds only its own instrumentation and registers only its own metrics. Every variant
has the same routes in the same order, so routing costs the same: ``/`` (the measured route,
matched first), ``/_probe`` (which loop and which stallwatch probe the server really runs;
never measured) and, for the three exporters, ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stallwatch import LoopMonitor, StallwatchMiddleware, get_monitor

VARIANTS = ("bare", "noop", "stallwatch", "instrumentator", "exporter")
EXTRA_VARIANTS = ("monitor",)
"""Not run by default: ``monitor`` is the bare app on a loop watched by ``LoopMonitor`` alone,
to see the loop-level hooks' share of stallwatch's cost under wrk."""


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"message": "hello"})


async def probe(request: Request) -> JSONResponse:
    """Tells the driver what it measured: uvloop or not, and the probe stallwatch chose."""
    monitor = get_monitor()
    return JSONResponse(
        {
            "loop": type(asyncio.get_running_loop()).__module__,
            "probe": monitor.probe if monitor is not None else None,
        }
    )


def _routes() -> list[Route]:
    return [Route("/", hello), Route("/_probe", probe)]


class NoopMiddleware:
    """The cheapest pure-ASGI middleware there is: the floor any middleware pays."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def bare() -> Starlette:
    return Starlette(routes=_routes())


def monitor() -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with LoopMonitor():
            yield

    return Starlette(routes=_routes(), lifespan=lifespan)


def noop() -> Starlette:
    return Starlette(routes=_routes(), middleware=[Middleware(NoopMiddleware)])


def stallwatch() -> Starlette:
    # Everything on: monitor, step timing, frozen time, all metrics, and /metrics served.
    return Starlette(
        routes=_routes(), middleware=[Middleware(StallwatchMiddleware, metrics_path="/metrics")]
    )


def instrumentator() -> Starlette:
    from prometheus_fastapi_instrumentator import Instrumentator

    app = Starlette(routes=_routes())
    Instrumentator().instrument(app).expose(app)  # its defaults, as its README shows
    return app


def exporter() -> Starlette:
    from starlette_exporter import PrometheusMiddleware, handle_metrics

    app = Starlette(routes=_routes(), middleware=[Middleware(PrometheusMiddleware)])
    app.add_route("/metrics", handle_metrics)
    return app
