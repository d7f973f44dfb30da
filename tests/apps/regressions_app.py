"""The everyday apps that stallwatch once broke (issue 15), each wrapped as users wrap them.

- ``/echo``: a POST with a body through a FastAPI ``@app.middleware("http")`` function, the
  most common FastAPI set-up there is: it hung when the request's tasks were wrapped.
- ``/stream``: a ``StreamingResponse`` under ASGI spec 2.3 whose client goes away before the
  body begins: Starlette cancels its task group, and anyio reads the tasks' coroutines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse

from stallwatch import StallwatchMiddleware

app = FastAPI()
streams = {"started": 0, "finished": 0}


@app.middleware("http")
async def passthrough(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    response.headers["x-seen"] = "yes"
    return response


@app.get("/")
async def root() -> dict[str, str]:
    return {"ok": "yes"}


@app.post("/echo")
async def echo(request: Request) -> dict[str, int]:
    return {"got": len(await request.body())}


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        streams["started"] += 1
        try:
            await asyncio.sleep(0.3)  # the client hangs up before the first chunk
            yield b"late"
        finally:
            streams["finished"] += 1

    return StreamingResponse(body())


@app.get("/streams")
async def stream_counts() -> PlainTextResponse:
    return PlainTextResponse(f"{streams['started']} {streams['finished']}")


app.add_middleware(StallwatchMiddleware, metrics_path="/metrics")
