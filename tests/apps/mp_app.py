"""A small app for the many-workers tests: each answer names the worker process that served it.

Served with ``uvicorn --workers N`` or gunicorn's ``UvicornWorker`` and ``PROMETHEUS_MULTIPROC_DIR``
set, so ``/metrics`` (answered by whichever worker gets the scrape) must add up every worker.
``/block`` holds the loop for a while, so stall metrics exist too.
"""

from __future__ import annotations

import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stallwatch import StallwatchMiddleware


async def pid(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


async def block(request: Request) -> JSONResponse:
    # A synchronous spin in ``async def``: the loop is held for the whole stretch.
    end = time.perf_counter() + float(request.query_params.get("seconds", "0.05"))
    while time.perf_counter() < end:
        pass
    return JSONResponse({"pid": os.getpid()})


app = StallwatchMiddleware(
    Starlette(routes=[Route("/pid", pid), Route("/block", block)]),
    metrics_path="/metrics",
)
