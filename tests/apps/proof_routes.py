"""A Starlette app with many kinds of route, and a client that calls it straight through ASGI.

The soak and fault tests drive it in-process (no sockets: the subject there is what
stallwatch keeps and counts, not timing): path parameters, a mount, any status code, an app
error, streams, a stream the client leaves halfway, work in ``gather`` and a task group,
background tasks, a request body. ``build()`` returns a fresh app each time, so each test
wraps its own in a middleware with its own registry.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

TEMPLATES = (
    "/",
    "/items/{item_id:int}",
    "/users/{user}/posts/{post:int}",
    "/status/{code:int}",
    "/boom",
    "/forbidden",
    "/stream/{chunks:int}",
    "/gather/{n:int}",
    "/group/{n:int}",
    "/background",
    "/echo",
    "/api/v1/things/{thing_id:int}",
    "/api/v1/health",
)
"""Every route template the app has, as declared (converters included, as Starlette names
them): the only ``route`` labels besides ``<unmatched>``."""


async def root(request: Request) -> Response:
    return PlainTextResponse("ok")


async def item(request: Request) -> Response:
    await asyncio.sleep(0)
    return JSONResponse({"item": request.path_params["item_id"]})


async def post(request: Request) -> Response:
    return JSONResponse(dict(request.path_params))


async def status(request: Request) -> Response:
    return Response(status_code=request.path_params["code"])


async def boom(request: Request) -> Response:
    await asyncio.sleep(0)
    raise RuntimeError("the app failed")


async def forbidden(request: Request) -> Response:
    raise HTTPException(403)


async def stream(request: Request) -> Response:
    chunks = request.path_params["chunks"]

    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            await asyncio.sleep(0)
            yield b"chunk %d\n" % i

    return StreamingResponse(body(), media_type="text/plain")


async def gathered(request: Request) -> Response:
    async def part(i: int) -> int:
        await asyncio.sleep(0)
        return i

    parts = await asyncio.gather(*(part(i) for i in range(request.path_params["n"])))
    return JSONResponse({"sum": sum(parts)})


async def grouped(request: Request) -> Response:
    total = 0

    async def part(i: int) -> None:
        nonlocal total
        await anyio.lowlevel.checkpoint()
        total += i

    async with anyio.create_task_group() as group:
        for i in range(request.path_params["n"]):
            group.start_soon(part, i)
    return JSONResponse({"sum": total})


async def background(request: Request) -> Response:
    async def later() -> None:
        await asyncio.sleep(0)

    return PlainTextResponse("queued", background=BackgroundTask(later))


async def echo(request: Request) -> Response:
    return Response(await request.body())


async def thing(request: Request) -> Response:
    return JSONResponse({"thing": request.path_params["thing_id"]})


async def health(request: Request) -> Response:
    return PlainTextResponse("healthy")


def build() -> Starlette:
    api = [
        Route("/things/{thing_id:int}", thing),
        Route("/health", health),
    ]
    return Starlette(
        routes=[
            Route("/", root),
            Route("/items/{item_id:int}", item),
            Route("/users/{user}/posts/{post:int}", post),
            Route("/status/{code:int}", status),
            Route("/boom", boom),
            Route("/forbidden", forbidden),
            Route("/stream/{chunks:int}", stream),
            Route("/gather/{n:int}", gathered),
            Route("/group/{n:int}", grouped),
            Route("/background", background),
            Route("/echo", echo, methods=["POST"]),
            Mount("/api/v1", routes=api),
        ]
    )


# -- the client ------------------------------------------------------------------------------


@dataclass
class Exchange:
    """One request as the client saw it."""

    status: int | None = None
    chunks: int = 0
    error: BaseException | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


def scope(method: str, path: str, body_length: int = 0) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"soak.test"), (b"content-length", str(body_length).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


async def call(
    app: Any,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    leave_after: int | None = None,
    keep: bool = False,
) -> Exchange:
    """One request through ``app``; ``leave_after=n``: the client disconnects after n chunks."""
    seen = Exchange()
    gone = asyncio.Event()
    request = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if request:
            return request.pop()
        await gone.wait()  # a client that stays until the response is done
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if gone.is_set():
            raise OSError("the client went away")
        if keep:
            seen.messages.append(message)
        if message["type"] == "http.response.start":
            seen.status = message["status"]
        elif message["type"] == "http.response.body" and message.get("body"):
            seen.chunks += 1
            if leave_after is not None and seen.chunks >= leave_after:
                gone.set()

    try:
        await app(scope(method, path, len(body)), receive, send)
    except Exception as exc:  # the app's own errors reach the server, as without stallwatch
        seen.error = exc
    return seen


ODD_METHODS = ("PROPFIND", "BREW", "get", "M-SEARCH", "PURGE", "X" * 40)


COMMON_CODES = (200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503)


def random_request(
    rng: random.Random, codes: Sequence[int] = COMMON_CODES
) -> tuple[str, str, dict[str, Any]]:
    """(method, path, options) drawn like mixed production traffic, with its junk.

    ``/status/{code}`` answers one of ``codes``: an app's usual handful by default; pass
    ``range(200, 600)`` for an app that returns many codes.
    """
    roll = rng.random()
    if roll < 0.12:  # scanners and typos: paths no route matches, never seen twice
        junk = "".join(rng.choice("abcdefghij/._-%") for _ in range(rng.randint(1, 30)))
        return "GET", f"/{junk}{rng.randrange(10**9)}", {}
    if roll < 0.18:
        return rng.choice(ODD_METHODS), rng.choice(["/", "/items/3", "/nope"]), {}
    if roll < 0.26:
        return "GET", f"/status/{rng.choice(codes)}", {}
    if roll < 0.29:
        return "GET", "/boom", {}
    if roll < 0.35:
        return "GET", f"/stream/{rng.randint(1, 6)}", {"leave_after": rng.choice([None, 1, 2])}
    choices: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/", {}),
        ("GET", f"/items/{rng.randrange(10**6)}", {}),
        ("GET", f"/users/u{rng.randrange(10**6)}/posts/{rng.randrange(100)}", {}),
        ("GET", "/forbidden", {}),
        ("GET", f"/gather/{rng.randint(1, 4)}", {}),
        ("GET", f"/group/{rng.randint(1, 4)}", {}),
        ("GET", "/background", {}),
        ("POST", "/echo", {"body": b"x" * rng.randint(0, 64)}),
        ("HEAD", "/", {}),
        ("GET", f"/api/v1/things/{rng.randrange(10**6)}", {}),
        ("GET", "/api/v1/health", {}),
    ]
    return rng.choice(choices)


def internal_errors(registry: CollectorRegistry) -> float:
    return sum(
        s.value
        for f in registry.collect()
        if f.name == "stallwatch_internal_errors"
        for s in f.samples
        if s.name.endswith("_total")
    )


async def lifespan(app: Any) -> Callable[[], Any]:
    """Start ``app``'s lifespan (and so the monitor); returns the coroutine that ends it."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.ensure_future(app(scope, inbox.get, replies.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await replies.get())["type"] == "lifespan.startup.complete"

    async def shutdown() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await replies.get())["type"] == "lifespan.shutdown.complete"
        await task

    return shutdown
