"""The app of the profile's end-to-end test: known short blocks in two routes and a child task.

- ``/a?ms=N`` blocks the loop once, on the line marked ``# blocks: a``;
- ``/b?ms=N`` blocks on the line marked ``# blocks: b``, then awaits a child task that blocks
  on ``# blocks: child`` (the child's time is ``/b``'s, as attribution says);
- ``/stream?seconds=N`` streams for N seconds, blocking 5 ms before each chunk: a request
  that lives long unnamed (its samples wait for its name, which the loop thread gives it);
- ``/truth`` answers the seconds each marked line really held the loop since start, measured
  with ``perf_counter`` around the one statement, and the stallwatch monitor's uptime.

Blocks are ``time.sleep``, which lets the GIL go, so the watchdog samples them freely: the
test holds the sampler's statistics to the truth, not the GIL's fairness. The profile's rate
comes from ``SW_PROFILE_RATE`` (default 100 a second).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from stallwatch import StallwatchMiddleware

TRUTH: dict[str, float] = {"a": 0.0, "b": 0.0, "child": 0.0}
"""Seconds each marked line held the loop, as measured around it."""
STARTED = time.perf_counter()


def block_a(seconds: float) -> None:
    began = time.perf_counter()
    time.sleep(seconds)  # blocks: a
    TRUTH["a"] += time.perf_counter() - began


def block_b(seconds: float) -> None:
    began = time.perf_counter()
    time.sleep(seconds)  # blocks: b
    TRUTH["b"] += time.perf_counter() - began


async def child(seconds: float) -> None:
    await asyncio.sleep(0)
    began = time.perf_counter()
    time.sleep(seconds)  # noqa: ASYNC251  # blocks: child
    TRUTH["child"] += time.perf_counter() - began


def marked_lines() -> dict[str, int]:
    """The line of each marked statement, read from this file."""
    lines: dict[str, int] = {}
    for number, text in enumerate(Path(__file__).read_text().splitlines(), start=1):
        _, mark, name = text.rpartition("# blocks: ")
        if mark and name.isidentifier():
            lines[name] = number
    return lines


async def route_a(request: Request) -> PlainTextResponse:
    block_a(float(request.query_params["ms"]) / 1e3)
    return PlainTextResponse("a")


async def route_b(request: Request) -> PlainTextResponse:
    seconds = float(request.query_params["ms"]) / 1e3
    block_b(seconds)
    await asyncio.create_task(child(seconds))
    return PlainTextResponse("b")


async def stream(request: Request) -> StreamingResponse:
    until = time.perf_counter() + float(request.query_params["seconds"])

    async def chunks() -> AsyncIterator[bytes]:
        while time.perf_counter() < until:
            time.sleep(0.005)  # noqa: ASYNC251 - the block
            yield b"."
            await asyncio.sleep(0.005)

    return StreamingResponse(chunks())


async def truth(request: Request) -> JSONResponse:
    return JSONResponse(
        {"seconds": TRUTH, "lines": marked_lines(), "file": __file__, "now": time.perf_counter()}
    )


app = StallwatchMiddleware(
    Starlette(
        routes=[
            Route("/a", route_a),
            Route("/b", route_b),
            Route("/stream", stream),
            Route("/truth", truth),
            Route("/", lambda request: PlainTextResponse("ok")),
        ]
    ),
    registry=CollectorRegistry(),
    report=True,
    profile_rate=float(os.environ.get("SW_PROFILE_RATE", "100")),
)
