"""The app of issue 19's tests: work handed to the thread pools, a loop held or kept busy,
and a route that costs the loop a fixed time per request, for shedding.

Everything the tests vary comes from the environment (``SW_*``); everything they compare
with stallwatch's figures is measured here, on the server's own clock (``CLOCK_MONOTONIC``,
which the tests' ``time.monotonic`` reads too).

- ``/a/{n}``, ``/b/{n}``: two routes that each hand a ``SW_JOB`` second job to the loop's
  default executor (``SW_POOL_SIZE`` threads, the app's own executor, set at start-up) and
  note how long it waited between submission and start.
- ``/sync/{n}``: a plain ``def`` endpoint, run by FastAPI in anyio's worker threads under the
  default limiter (``SW_TOKENS`` tokens).
- ``/block``: holds the loop for ``seconds``; ``/busy``: keeps it ~90 % busy from then on.
- ``/work``: holds the loop ``SW_WORK`` seconds per request; ``/state`` says how many started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry

from stallwatch import StallwatchMiddleware

POOL_SIZE = int(os.environ.get("SW_POOL_SIZE", "1"))
TOKENS = int(os.environ.get("SW_TOKENS", "2"))
JOB = float(os.environ.get("SW_JOB", "0.02"))
SYNC = float(os.environ.get("SW_SYNC", "0.2"))
WORK = float(os.environ.get("SW_WORK", "0.01"))
PORT = os.environ.get("SW_METRICS_PORT")
SHED = os.environ.get("SW_SHED_LAG")

waits: dict[str, list[float]] = {"/a/{n}": [], "/b/{n}": []}
threads: set[str] = set()
work_started = 0
busy: list[asyncio.Task[None]] = []


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="app-pool")
    )
    anyio.to_thread.current_default_thread_limiter().total_tokens = TOKENS
    yield


app = FastAPI(lifespan=lifespan)
app.add_middleware(
    StallwatchMiddleware,
    registry=CollectorRegistry(),
    metrics_path="/metrics",
    metrics_port=int(PORT) if PORT else None,
    liveness_timeout=float(os.environ.get("SW_LIVENESS_TIMEOUT", "1.0")),
    shed_lag=float(SHED) if SHED else None,
)


def hold(seconds: float) -> None:
    """Block the calling thread: the loop's, where an ``async def`` calls it."""
    time.sleep(seconds)


async def submit(route: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started: list[float] = []

    def job() -> None:
        started.append(perf_counter())
        threads.add(threading.current_thread().name)
        time.sleep(JOB)

    submitted = perf_counter()
    await loop.run_in_executor(None, job)
    waits[route].append(started[0] - submitted)
    return {"waited": started[0] - submitted}


@app.get("/a/{n}")
async def route_a(n: int) -> dict[str, Any]:
    return await submit("/a/{n}")


@app.get("/b/{n}")
async def route_b(n: int) -> dict[str, Any]:
    return await submit("/b/{n}")


@app.get("/sync/{n}")
def sync(n: int) -> PlainTextResponse:
    # A Response, not a model: FastAPI would validate a model in the pool too.
    time.sleep(SYNC)
    return PlainTextResponse("done")


@app.get("/block")
async def block(seconds: float) -> dict[str, float]:
    began = perf_counter()
    hold(seconds)  # holds the loop
    return {"began": began, "ended": perf_counter()}


async def keep_busy() -> None:
    while True:
        hold(0.045)  # 45 ms of every 50: the loop turns, late
        await asyncio.sleep(0.005)


@app.get("/busy")
async def start_busy() -> dict[str, bool]:
    if not busy:
        busy.append(asyncio.get_running_loop().create_task(keep_busy()))
    return {"busy": True}


@app.get("/work")
async def work() -> PlainTextResponse:
    global work_started
    work_started += 1
    hold(WORK)  # the loop's capacity: 1 / WORK requests a second
    return PlainTextResponse("ok")


@app.get("/state")
async def state() -> JSONResponse:
    return JSONResponse({"waits": waits, "threads": sorted(threads), "work_started": work_started})
