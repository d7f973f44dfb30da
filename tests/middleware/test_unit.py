"""The middleware without a server: options, containment of its own errors, pass-through.

Real loops (``asyncio.run``) and direct ASGI calls or ``httpx.ASGITransport``; every test
has a fresh ``CollectorRegistry`` and stops the monitor it started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import stallwatch
from stallwatch import StallwatchMiddleware
from stallwatch.routes import StarletteRoutes

Message = MutableMapping[str, Any]


def hold_the_loop() -> None:
    """5 ms, longer than the 1 ms floor: the timeline then names the route that held the
    loop from inside the loop's poll, where an exception would stop the loop."""
    time.sleep(0.005)


async def hello(scope: Any, receive: Any, send: Any) -> None:
    hold_the_loop()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def get(app: Any, paths: list[str]) -> list[httpx.Response]:
    """GET each path through ``app`` on a real loop; stops the monitor the app started."""

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                responses = []
                for path in paths:
                    responses.append(await client.get(path))
                    await asyncio.sleep(0.002)  # let the loop poll between requests
                return responses
        finally:
            monitor = stallwatch.get_monitor()
            if monitor is not None:
                monitor.stop()

    return asyncio.run(main())


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"interval": 0}, "interval"),
        ({"interval": "10ms"}, "interval"),
        ({"stall_threshold": -1.0}, "stall_threshold"),
        ({"stall_threshold": 0.01, "floor": 0.05}, "floor"),
        ({"lag_buckets": ()}, "lag_buckets"),
        ({"request_buckets": (0.5, 0.1)}, "request_buckets"),
        ({"metrics_path": "metrics"}, "metrics_path"),
        ({"metrics_port": 70000}, "metrics_port"),
        ({"metrics_port": "9000"}, "metrics_port"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        StallwatchMiddleware(hello, registry=CollectorRegistry(), **options)


def test_custom_buckets_are_used() -> None:
    registry = CollectorRegistry()
    app = StallwatchMiddleware(
        hello, registry=registry, request_buckets=(0.5, 1.0), lag_buckets=(0.01, 0.1)
    )
    assert [r.status_code for r in get(app, ["/"])] == [200]
    labels = {"method": "GET", "route": "<unmatched>", "status": "200"}
    duration = "stallwatch_http_request_duration_seconds_bucket"
    assert registry.get_sample_value(duration, {**labels, "le": "0.5"}) == 1
    assert registry.get_sample_value(duration, {**labels, "le": "0.25"}) is None
    assert (
        registry.get_sample_value("stallwatch_event_loop_lag_seconds_bucket", {"le": "0.1"})
        is not None
    )


# -- errors of stallwatch's own ---------------------------------------------------------------


def test_a_route_resolver_that_raises_is_contained_and_counted() -> None:
    registry = CollectorRegistry()

    def broken(scope: Any) -> str | None:
        raise KeyError("resolver broke")

    app = StallwatchMiddleware(hello, registry=registry, route_resolver=broken)
    responses = get(app, ["/a"])
    assert [(r.status_code, r.text) for r in responses] == [(200, "hello")]
    errors = registry.get_sample_value(
        "stallwatch_internal_errors_total", {"component": "middleware"}
    )
    assert errors == 1
    # The request is still measured, under the one label that cannot grow.
    labels = {"method": "GET", "route": "<unmatched>", "status": "200"}
    assert registry.get_sample_value("stallwatch_http_request_duration_seconds_count", labels) == 1


def test_the_default_resolver_raising_inside_a_starlette_app_is_contained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()

    async def endpoint(request: Request) -> Response:
        hold_the_loop()
        return JSONResponse({"ok": True})

    def broken(self: StarletteRoutes, scope: Any) -> str | None:
        raise RuntimeError("resolver broke")

    monkeypatch.setattr(StarletteRoutes, "__call__", broken)
    app = Starlette(routes=[Route("/ok", endpoint)])
    app.add_middleware(StallwatchMiddleware, registry=registry)
    responses = get(app, ["/ok", "/ok"])
    assert [r.json() for r in responses] == [{"ok": True}, {"ok": True}]
    errors = registry.get_sample_value(
        "stallwatch_internal_errors_total", {"component": "middleware"}
    )
    assert errors == 2  # once per request, however often the timeline asked


# -- pass-through -----------------------------------------------------------------------------


def test_an_exception_of_the_app_is_recorded_as_500_and_reraised_unchanged() -> None:
    registry = CollectorRegistry()
    raised = ValueError("the app's own")

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0)
        raise raised

    app = StallwatchMiddleware(failing, registry=registry)
    sent: list[Message] = []

    async def main() -> None:
        scope = {"type": "http", "method": "GET", "path": "/fail", "headers": []}

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            sent.append(message)

        try:
            await app(scope, receive, send)
        finally:
            monitor = stallwatch.get_monitor()
            assert monitor is not None
            monitor.stop()

    with pytest.raises(ValueError, match="the app's own") as caught:
        asyncio.run(main())
    assert caught.value is raised
    assert sent == []
    labels = {"method": "GET", "route": "<unmatched>", "status": "500"}
    assert registry.get_sample_value("stallwatch_http_request_duration_seconds_count", labels) == 1
    assert (
        registry.get_sample_value("stallwatch_internal_errors_total", {"component": "middleware"})
        is None
    )


def test_lifespan_messages_pass_through_and_drive_the_monitor() -> None:
    registry = CollectorRegistry()
    seen_by_app: list[Message] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            seen_by_app.append(message)
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    app = StallwatchMiddleware(lifespan_app, registry=registry)

    async def main() -> tuple[list[Message], bool, bool]:
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        outbox: list[Message] = []
        running: list[bool] = []

        async def send(message: Message) -> None:
            outbox.append(message)
            running.append(stallwatch.get_monitor() is not None)

        await inbox.put({"type": "lifespan.startup"})
        await inbox.put({"type": "lifespan.shutdown"})
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        return outbox, running[0], stallwatch.get_monitor() is not None

    outbox, running_after_startup, running_after_shutdown = asyncio.run(main())
    assert seen_by_app == [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    assert outbox == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert running_after_startup
    assert not running_after_shutdown
    assert (
        registry.get_sample_value("stallwatch_internal_errors_total", {"component": "lifespan"})
        is None
    )
