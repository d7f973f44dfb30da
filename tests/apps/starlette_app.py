"""The plain Starlette app of the middleware tests: the same routes as ``fastapi_app``.

It mounts stallwatch the other way the docs show, ``Middleware(StallwatchMiddleware, ...)`` in
the constructor, and serves the metrics with ``Mount("/metrics", metrics_app(registry))``;
its prefixed routes come from a ``Mount`` of routes and a mounted sub-application.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from stallwatch import StallwatchMiddleware, metrics_app

from . import common

SETTINGS = common.settings()
STATE = common.State()
DB = common.Database(SETTINGS.state_dir / "app.sqlite")
BLOCKERS = common.blockers(DB)
CACHE_READ = 0.002


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.started = True
    yield
    common.mark_shutdown(SETTINGS)


async def root(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def ping(request: Request) -> Response:
    await common.health_check()
    return JSONResponse({"pong": True})


async def item(request: Request) -> Response:
    await common.wait_item(STATE, float(request.query_params.get("delay", "0")))
    return JSONResponse({"item_id": request.path_params["item_id"]})


async def block(request: Request) -> Response:
    blocker = BLOCKERS[request.path_params["kind"]]
    return JSONResponse({"blocked": blocker(float(request.query_params["seconds"]))})


async def cache(request: Request) -> Response:
    return JSONResponse({"key": request.path_params["key"], "read": DB.read(CACHE_READ)})


async def yield_once(request: Request) -> Response:
    await asyncio.sleep(0)
    return JSONResponse({"ok": True})


async def stalls(request: Request) -> Response:
    return JSONResponse(common.stalls())


async def state(request: Request) -> Response:
    return JSONResponse(
        {
            "waiting": STATE.waiting,
            "background_done": STATE.background_done,
            "streams_cancelled": STATE.streams_cancelled,
            "started": getattr(request.app.state, "started", False),
            "probe": common.probe(),
        }
    )


async def stream(request: Request) -> Response:
    count = int(request.query_params.get("chunks", "5"))
    return StreamingResponse(common.chunks(count), media_type="text/plain")


async def sse(request: Request) -> Response:
    count = int(request.query_params.get("events", "3"))
    return StreamingResponse(common.events(count), media_type="text/event-stream")


async def endless(request: Request) -> Response:
    return StreamingResponse(common.endless(STATE), media_type="text/plain")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


async def boom(request: Request) -> Response:
    raise RuntimeError("boom from the app")


async def background(request: Request) -> Response:
    return JSONResponse({"queued": True}, background=BackgroundTask(common.background_job, STATE))


async def user(request: Request) -> Response:
    return JSONResponse({"user_id": request.path_params["user_id"]})


async def thing(request: Request) -> Response:
    return JSONResponse({"thing_id": request.path_params["thing_id"]})


async def handled(request: Request, exc: Exception) -> Response:
    # Runs in Starlette's ServerErrorMiddleware, outside stallwatch: the text proves the
    # exception reached it unchanged.
    return PlainTextResponse(f"handled {type(exc).__name__}: {exc}", status_code=500)


app = Starlette(
    routes=[
        Route("/", root),
        Route("/ping", ping),
        Route("/items/{item_id}", item),
        Route("/block/{kind}", block),
        Route("/cache/{key}", cache),
        Route("/yield", yield_once),
        Route("/stalls", stalls),
        Route("/state", state),
        Route("/stream", stream),
        Route("/sse", sse),
        Route("/endless", endless),
        WebSocketRoute("/ws", echo),
        Route("/boom", boom),
        Route("/background", background, methods=["POST"]),
        Mount("/api/v1", routes=[Route("/users/{user_id}", user)]),
        Mount("/sub", app=Starlette(routes=[Route("/things/{thing_id}", thing)])),
        Mount("/metrics", app=metrics_app(SETTINGS.registry)),
    ],
    middleware=[
        Middleware(
            StallwatchMiddleware,
            registry=SETTINGS.registry,
            stall_threshold=SETTINGS.stall_threshold,
            metrics_port=SETTINGS.metrics_port,
        )
    ],
    exception_handlers={Exception: handled},
    lifespan=lifespan,
)
