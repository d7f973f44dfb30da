"""A Litestar app wrapped whole by stallwatch: handlers, a router prefix, an ASGI mount."""

from __future__ import annotations

from litestar import Litestar, Router, get
from litestar.handlers import asgi
from litestar.params import FromPath
from litestar.types import Receive, Scope, Send

from stallwatch import StallwatchMiddleware


@get("/")
async def root() -> dict[str, bool]:
    return {"ok": True}


@get("/items/{item_id:int}")
async def read_item(item_id: FromPath[int]) -> dict[str, int]:
    return {"item_id": item_id}


@get("/users/{name:str}")
async def read_user(name: FromPath[str]) -> dict[str, str]:
    return {"name": name}


@asgi("/static", is_mount=True, copy_scope=True)
async def static(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"static"})


litestar_app = Litestar([root, read_item, static, Router("/api", route_handlers=[read_user])])
app = StallwatchMiddleware(litestar_app, metrics_path="/metrics")
