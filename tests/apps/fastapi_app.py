"""The FastAPI app of the middleware tests, mounted with ``app.add_middleware``.

Its routes are the situations the middleware must name or stay out of: a route that blocks
the loop (``/block/{kind}``), requests that wait politely (``/items/{item_id}``), a 2 ms
SQLite read (``/cache/{key}``), streams, server-sent events, a websocket, background tasks,
an exception, an included router and a mounted sub-application. ``/stalls`` and ``/state``
let the tests look inside.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, BackgroundTasks, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from stallwatch import StallwatchMiddleware

from . import common

SETTINGS = common.settings()
STATE = common.State()
DB = common.Database(SETTINGS.state_dir / "app.sqlite")
BLOCKERS = common.blockers(DB)
CACHE_READ = 0.002


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.started = True
    yield
    common.mark_shutdown(SETTINGS)


app = FastAPI(lifespan=lifespan)
app.add_middleware(
    StallwatchMiddleware,
    registry=SETTINGS.registry,
    stall_threshold=SETTINGS.stall_threshold,
    metrics_path="/metrics",
    metrics_port=SETTINGS.metrics_port,
)


async def handled(request: Request, exc: Exception) -> PlainTextResponse:
    # Runs in Starlette's ServerErrorMiddleware, outside stallwatch: the text proves the
    # exception reached it unchanged.
    return PlainTextResponse(f"handled {type(exc).__name__}: {exc}", status_code=500)


app.add_exception_handler(Exception, handled)


@app.get("/")
async def root() -> dict[str, bool]:
    return {"ok": True}


@app.get("/ping")
async def ping() -> dict[str, bool]:
    await common.health_check()
    return {"pong": True}


@app.get("/items/{item_id}")
async def item(item_id: str, delay: float = 0.0) -> dict[str, str]:
    await common.wait_item(STATE, delay)
    return {"item_id": item_id}


@app.get("/block/{kind}")
async def block(kind: str, seconds: float) -> dict[str, float]:
    return {"blocked": BLOCKERS[kind](seconds)}


@app.get("/cache/{key}")
async def cache(key: str) -> dict[str, object]:
    return {"key": key, "read": DB.read(CACHE_READ)}


@app.get("/yield")
async def yield_once() -> dict[str, bool]:
    await asyncio.sleep(0)
    return {"ok": True}


@app.get("/stalls")
async def stalls() -> JSONResponse:
    return JSONResponse(common.stalls())


@app.get("/state")
async def state(request: Request) -> dict[str, object]:
    return {
        "waiting": STATE.waiting,
        "background_done": STATE.background_done,
        "streams_cancelled": STATE.streams_cancelled,
        "started": getattr(request.app.state, "started", False),
        "probe": common.probe(),
    }


@app.get("/stream")
async def stream(chunks: int = 5) -> StreamingResponse:
    return StreamingResponse(common.chunks(chunks), media_type="text/plain")


@app.get("/sse")
async def sse(events: int = 3) -> StreamingResponse:
    return StreamingResponse(common.events(events), media_type="text/event-stream")


@app.get("/endless")
async def endless() -> StreamingResponse:
    return StreamingResponse(common.endless(STATE), media_type="text/plain")


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("boom from the app")


@app.post("/background")
async def background(tasks: BackgroundTasks) -> dict[str, bool]:
    tasks.add_task(common.background_job, STATE)
    return {"queued": True}


users = APIRouter()


@users.get("/users/{user_id}")
async def user(user_id: str) -> dict[str, str]:
    return {"user_id": user_id}


app.include_router(users, prefix="/api/v1")

sub = FastAPI()


@sub.get("/things/{thing_id}")
async def thing(thing_id: str) -> dict[str, str]:
    return {"thing_id": thing_id}


app.mount("/sub", sub)
