"""The app of the attribution tests: every way a request hands its work to another task.

Each ``/shape/...`` route blocks the loop with ``common.block_sleep`` from inside a task the
request started (or, for ``/shape/direct``, from the handler itself), and answers with the
seconds the block really took. ``SW_BASEHTTP`` puts a ``BaseHTTPMiddleware`` inside
stallwatch (``inside``: it runs the rest of the app in a child task) or outside it
(``outside``), or none (``none``, the default).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from stallwatch import StallwatchMiddleware

from . import common

SETTINGS = common.settings()
STATE = common.State()
FIRED: list[float] = []
"""Blocks of the fire-and-forget task, measured after its request has ended."""
TASKS: set[asyncio.Task[None]] = set()
"""Fire-and-forget tasks, kept alive as the asyncio docs ask."""

app = FastAPI()


async def passthrough(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    return await call_next(request)


def add_stallwatch() -> None:
    app.add_middleware(
        StallwatchMiddleware,
        registry=SETTINGS.registry,
        stall_threshold=SETTINGS.stall_threshold,
        metrics_path="/metrics",
    )


# Starlette's add_middleware puts each new middleware outside the ones added before it.
BASEHTTP = os.environ.get("SW_BASEHTTP", "none")
if BASEHTTP == "inside":
    app.middleware("http")(passthrough)
    add_stallwatch()
elif BASEHTTP == "outside":
    add_stallwatch()
    app.middleware("http")(passthrough)
else:
    add_stallwatch()


async def child(seconds: float) -> float:
    await asyncio.sleep(0)
    return common.block_sleep(seconds)


async def parent(seconds: float) -> float:
    return await asyncio.create_task(child(seconds))


@app.get("/shape/direct")
async def direct(seconds: float) -> dict[str, float]:
    return {"blocked": common.block_sleep(seconds)}


@app.get("/shape/gather")
async def gather(seconds: float) -> dict[str, float]:
    (blocked,) = await asyncio.gather(child(seconds))
    return {"blocked": blocked}


@app.get("/shape/create_task")
async def create_task(seconds: float) -> dict[str, float]:
    return {"blocked": await asyncio.create_task(child(seconds))}


@app.get("/shape/taskgroup")
async def taskgroup(seconds: float) -> dict[str, float]:
    if sys.version_info < (3, 11):
        raise RuntimeError("asyncio.TaskGroup needs Python 3.11")
    async with asyncio.TaskGroup() as group:
        task = group.create_task(child(seconds))
    return {"blocked": task.result()}


@app.get("/shape/anyio")
async def anyio_group(seconds: float) -> dict[str, float]:
    blocked: list[float] = []

    async def run() -> None:
        blocked.append(await child(seconds))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
    return {"blocked": blocked[0]}


@app.get("/shape/nested")
async def nested(seconds: float) -> dict[str, float]:
    return {"blocked": await asyncio.create_task(parent(seconds))}


@app.get("/shape/stream")
async def stream(seconds: float) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        yield "started\n"
        await asyncio.sleep(0)
        yield f'{{"blocked": {common.block_sleep(seconds)}}}\n'

    return StreamingResponse(body(), media_type="text/plain")


@app.get("/shape/fire")
async def fire(seconds: float) -> dict[str, bool]:
    async def later() -> None:
        await asyncio.sleep(0.05)  # after the response has gone
        FIRED.append(common.block_sleep(seconds))

    task = asyncio.create_task(later())
    TASKS.add(task)
    task.add_done_callback(TASKS.discard)
    return {"started": True}


@app.get("/items/{item_id}")
async def item(item_id: int, delay: float = 0.0) -> dict[str, int]:
    await common.wait_item(STATE, delay)
    return {"item_id": item_id}


@app.get("/state")
async def state() -> dict[str, object]:
    return {"waiting": STATE.waiting, "fired": FIRED, "probe": common.probe()}


@app.get("/stalls")
async def stalls() -> list[dict[str, object]]:
    return common.stalls()
