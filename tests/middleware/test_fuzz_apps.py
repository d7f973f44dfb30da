"""Real framework apps that start tasks behave exactly as bare under fuzzed requests.

``tests/test_fuzz.py`` drives a scripted app; this drives Starlette apps that do what
everyday apps do with tasks: a ``BaseHTTPMiddleware`` (its inner task, its anyio task
group), a ``StreamingResponse`` (under ASGI spec 2.3 its body runs beside a task that listens
for the client's disconnect, and is cancelled when it comes), a request body read in chunks,
an anyio task group, and an error. Hypothesis draws the route, the method, the spec version
and what the client sends, disconnects at any point included; the same request runs through
the bare app and through ``StallwatchMiddleware`` on one loop, and both must send the same
messages, receive the same ones and end the same way. At least 1,500 cases (issue 15).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from stallwatch import StallwatchMiddleware
from tests.apps import proof_routes
from tests.test_fuzz import Outcome, drive


async def as_json(request: Request) -> Response:
    return JSONResponse({"path": request.url.path})


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0)
            yield b"chunk %d;" % i

    return StreamingResponse(chunks())


async def body(request: Request) -> Response:
    return JSONResponse({"got": len(await request.body())})


async def group(request: Request) -> Response:
    done: list[int] = []

    async def child(i: int) -> None:
        await anyio.lowlevel.checkpoint()
        done.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(2):
            tg.start_soon(child, i)
    return JSONResponse({"children": sorted(done)})


async def fail(request: Request) -> Response:
    raise ValueError("the app failed")


async def passthrough(request: Request, call_next: RequestResponseEndpoint) -> Response:
    response = await call_next(request)
    response.headers["x-through"] = "yes"
    return response


ROUTES = [
    Route("/json", as_json),
    Route("/stream", stream),
    Route("/body", body, methods=["GET", "POST"]),
    Route("/group", group),
    Route("/fail", fail),
]
APPS = {
    "plain": Starlette(routes=ROUTES),
    "base-http-middleware": Starlette(
        routes=ROUTES, middleware=[Middleware(BaseHTTPMiddleware, dispatch=passthrough)]
    ),
}


@dataclass
class Both:
    loop: asyncio.AbstractEventLoop
    wrapped: dict[str, StallwatchMiddleware]
    registry: CollectorRegistry
    cases: int = 0


@pytest.fixture(scope="module")
def both() -> Iterator[Both]:
    loop = asyncio.new_event_loop()
    registry = CollectorRegistry()
    wrapped = {name: StallwatchMiddleware(app, registry=registry) for name, app in APPS.items()}
    try:
        yield Both(loop, wrapped, registry)
    finally:
        for app in wrapped.values():
            if app.monitor is not None:
                app.monitor.stop()
        loop.close()


CHUNK = st.fixed_dictionaries(
    {"type": st.just("http.request"), "body": st.binary(max_size=8), "more_body": st.booleans()}
)
INBOX = st.lists(st.one_of(CHUNK, st.just({"type": "http.disconnect"})), max_size=4)


def seen(outcome: Outcome) -> tuple[Any, ...]:
    """What crossed the boundary; an error by its type and the repr of its arguments (an
    exception group's arguments are exception objects, equal only to themselves)."""
    error = outcome.error
    return (outcome.sent, outcome.received, error and (error[0], repr(error[1])))


@settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    app=st.sampled_from(sorted(APPS)),
    path=st.sampled_from(["/json", "/stream", "/body", "/group", "/fail", "/missing"]),
    method=st.sampled_from(["GET", "POST"]),
    spec=st.sampled_from(["2.3", "2.4"]),
    inbox=INBOX,
    fails=st.one_of(st.none(), st.integers(0, 2)),
)
def test_framework_apps_that_start_tasks_behave_as_bare(
    both: Both, app: str, path: str, method: str, spec: str, inbox: list[Any], fails: int | None
) -> None:
    scope = proof_routes.scope(method, path)
    scope["asgi"] = {"version": "3.0", "spec_version": spec}
    bare = both.loop.run_until_complete(drive(APPS[app], scope, inbox, fails))
    wrapped = both.loop.run_until_complete(drive(both.wrapped[app], scope, inbox, fails))
    assert seen(wrapped) == seen(bare), f"app {app} scope {scope!r} inbox {inbox!r} fails {fails}"
    both.cases += 1


def test_the_fuzzed_requests_were_watched_and_cost_stallwatch_no_error(both: Both) -> None:
    """Runs after the fuzz (same module, in order): stallwatch saw the requests, and none of
    them made an error of its own."""
    assert both.cases >= 1500
    for app in both.wrapped.values():
        app.flush()
    counted = sum(
        sample.value
        for family in both.registry.collect()
        if family.name == "stallwatch_http_request_duration_seconds"
        for sample in family.samples
        if sample.name.endswith("_count")
    )
    assert counted >= 1500
    errors = [
        sample
        for family in both.registry.collect()
        if family.name == "stallwatch_internal_errors"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value
    ]
    assert errors == []
