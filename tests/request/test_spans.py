"""``RequestSpan`` lets go of the request when it ends, so stallwatch leaves nothing for the
garbage collector: under load, garbage that only the collector frees made collections several
times as frequent, and full collections are the long pauses in a service's tail.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from stallwatch import StallwatchMiddleware


def fastapi_app(wrapped: bool) -> Any:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"item_id": item_id}

    return StallwatchMiddleware(app, registry=CollectorRegistry()) if wrapped else app


async def one_request(app: Any, scope: dict[str, Any]) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(scope, receive, send)


class Scope(dict[str, Any]):
    """A scope that a weak reference can watch (a plain dict cannot be weakly referenced)."""


def scope_of(item: int) -> dict[str, Any]:
    return Scope(
        {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/items/{item}",
            "raw_path": f"/items/{item}".encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"test")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
    )


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def garbage_per_request(app: Any) -> float:
    """Objects only the collector could free, per request through ``app``.

    Taken as the difference between 300 and 100 requests on one loop each, so what a loop
    and its monitor leave behind when the loop closes (the same in both) cancels out.
    """

    def garbage_after(requests: int) -> int:
        async def main() -> None:
            for item in range(requests):
                await one_request(app, scope_of(item))

        gc.collect()
        asyncio.run(main())
        return gc.collect()

    garbage_after(10)  # imports, first-call caches
    return (garbage_after(300) - garbage_after(100)) / 200


@pytest.mark.usefixtures("collector_off")
def test_stallwatch_adds_no_garbage_for_the_collector() -> None:
    bare = garbage_per_request(fastapi_app(wrapped=False))
    watched = garbage_per_request(fastapi_app(wrapped=True))
    assert watched <= bare + 0.5, (watched, bare)  # 19 objects a request before the fix


@pytest.mark.usefixtures("collector_off")
def test_a_finished_request_keeps_no_scope_alive() -> None:
    """Not even until the loop polls next: the scope goes as soon as the app's frames go."""
    app = fastapi_app(wrapped=True)

    async def main() -> bool:
        scope = scope_of(1)
        alive = weakref.ref(scope)
        await one_request(app, scope)
        del scope
        return alive() is None  # no poll in between: this is the same step

    assert asyncio.run(main())
