"""Starlette routes reached more than one way, for the route-naming tests.

One list of routes mounted under two prefixes and under a parameterised mount, an opaque mounted
app (static files), a route that wants a trailing slash, a websocket, and a user middleware that
holds the loop *before* the router runs (``?block=ms``), then yields, so the loop must name a
request whose router has not run yet.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from stallwatch import StallwatchMiddleware


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


class HoldBeforeRouting:
    """A user's middleware that blocks the loop for ``?block=<ms>`` and yields before routing."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["query_string"].startswith(b"block="):
            time.sleep(int(scope["query_string"][6:]) / 1000)  # noqa: ASYNC251 (the point)
            await asyncio.sleep(0)  # the loop polls here, the router has not run
        await self.app(scope, receive, send)


SHARED = [Route("/items/{item_id:int}", ok), Route("/only-post", ok, methods=["POST"])]

app = Starlette(
    routes=[
        Route("/", ok),
        Mount("/a", routes=SHARED),
        Mount("/b", routes=SHARED),
        Mount("/users/{uid}", routes=[Route("/posts/{post_id}", ok), *SHARED]),
        Mount("/static", app=StaticFiles(directory=Path(__file__).parent)),
        Route("/dir/", ok),
        WebSocketRoute("/ws", echo),
    ],
    middleware=[
        Middleware(StallwatchMiddleware, metrics_path="/metrics"),
        Middleware(HoldBeforeRouting),
    ],
)
