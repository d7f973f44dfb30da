"""Apps for the report tests, each served by real uvicorn in its own process.

- ``app``: a Starlette app with ``StallwatchMiddleware(report=True)``; its token and its
  off-loop port come from ``SW_REPORT_TOKEN`` and ``SW_METRICS_PORT``. ``/hold?ms=N`` blocks
  the loop on ``HOLD_LINE``, ``/hold-again?ms=N`` on ``AGAIN_LINE``; ``/ping`` never blocks.
- ``off``: the same app with the report left off (its default).
- ``demo``: the demo service (``demo_app``) with the report served beside it, configured by
  the demo's ``DEMO_*`` variables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from stallwatch import StallwatchMiddleware, get_monitor
from stallwatch._types import ASGIApp, Receive, Scope, Send


def hold(seconds: float) -> float:
    began = time.perf_counter()
    time.sleep(seconds)  # the report's line
    return time.perf_counter() - began


def hold_again(seconds: float) -> float:
    began = time.perf_counter()
    time.sleep(seconds)  # the report's other line
    return time.perf_counter() - began


def line_of(marker: str) -> int:
    """The line of this module that ends with ``marker``: what the report must name."""
    for number, text in enumerate(Path(__file__).read_text().splitlines(), start=1):
        if text.rstrip().endswith(marker):
            return number
    raise LookupError(marker)


HOLD_LINE = line_of("# the report's line")
AGAIN_LINE = line_of("# the report's other line")


async def hold_route(request: Request) -> JSONResponse:
    return JSONResponse({"held": hold(float(request.query_params["ms"]) / 1e3)})


async def hold_again_route(request: Request) -> JSONResponse:
    return JSONResponse({"held": hold_again(float(request.query_params["ms"]) / 1e3)})


async def ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


def build(*, report: bool) -> Any:
    port = os.environ.get("SW_METRICS_PORT")
    starlette = Starlette(
        routes=[
            Route("/hold", hold_route),
            Route("/hold-again", hold_again_route),
            Route("/ping", ping),
        ]
    )
    return StallwatchMiddleware(
        starlette,
        registry=CollectorRegistry(),
        stall_threshold=0.05,
        report=report,
        report_token=os.environ.get("SW_REPORT_TOKEN") or None,
        metrics_port=int(port) if port else None,
        metrics_path="/metrics",
    )


app = build(report=True)
off = build(report=False)


def _demo() -> ASGIApp:
    """The demo app with the report served beside it, whichever way the demo is built."""
    from demo_app.app import create_app, settings_from_env
    from stallwatch.report.http import ReportApp

    inner: ASGIApp = create_app(**settings_from_env())
    report = ReportApp(get_monitor)  # served on the loop: get_monitor() finds its monitor

    async def demo(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and report.handles(scope["path"]):
            await report(scope, receive, send)
        else:
            await inner(scope, receive, send)

    return demo


demo = _demo() if os.environ.get("SW_REPORT_DEMO") else None


# -- the demo under load, for the page and CLI tests -------------------------------------------

DEMO_ENV = {
    "SW_REPORT_DEMO": "1",
    "DEMO_MODE": "blocking",
    # About 10 to 20 ms per read on a 2-core machine: each read is a stall of its own past
    # the 10 ms threshold, so the line is found with a few requests, not a load test.
    "DEMO_SEED_ROWS": "200000",
    "DEMO_STALL_THRESHOLD": "0.01",
}
DEMO_TARGET = "tests.apps.report_app:demo"


def put_load(base: str, *, clients: int = 4, requests: int = 12) -> None:
    """A few bounded concurrent requests: cache reads (the culprit) and pings (its victims)."""
    import threading

    import httpx

    def client(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30.0) as http:
            for n in range(requests):
                http.get(f"/cache/key-{(i * requests + n) % 1000}" if n % 3 else "/ping")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120.0)


@contextmanager
def loaded_demo(*, stalls: int = 5, timeout: float = 60.0) -> Iterator[str]:
    """The demo served by real uvicorn, once its report holds ``stalls`` stalls; yields its URL.

    Generous timeouts: seeding the table and the first reads are slow on a loaded machine.
    """
    import sys

    import httpx

    from tests.servers import free_port, running

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", DEMO_TARGET, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"]
    with running(command, base + "/ping", env=DEMO_ENV, timeout=timeout):
        deadline = time.monotonic() + timeout
        while httpx.get(f"{base}/_stallwatch/api/summary", timeout=30).json()["stalls"] < stalls:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the demo in blocking mode had not stalled {stalls} times")
            put_load(base)
        put_load(base, clients=3, requests=6)  # the latest seconds have load too
        yield base


def demo_blocking_line() -> str:
    """``demo_app/cache.py:N in read_blocking``: the line the report must name first."""
    import inspect

    from demo_app import cache

    lines, first = inspect.getsourcelines(cache.read_blocking)
    for offset, text in enumerate(lines):
        if ".execute(" in text:
            return f"demo_app/cache.py:{first + offset} in read_blocking"
    raise LookupError("read_blocking has no execute() line")
