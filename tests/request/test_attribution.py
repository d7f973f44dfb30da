"""Work done by any task a request starts is that request's.

Real uvicorn, on the standard loop and on uvloop: three requests wait in ``/items/{item_id}``
while a ``/shape/...`` route blocks the loop from a task it started (``gather``,
``create_task``, ``TaskGroup``, an anyio task group, a child's child, a streaming body, a
task that outlives its request) or through a ``BaseHTTPMiddleware`` inside or outside
stallwatch. Each test asserts that the stall names the shape's route as culprit, that the
culprit request is neither its own victim nor frozen by its own work, and that each waiting
request was frozen by that route for the time the block really took.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stallwatch import BACKGROUND
from tests.middleware_support import (
    AppSpec,
    Metrics,
    RawConnection,
    Server,
    poll,
    requests_in_flight,
)
from tests.servers import uvicorn

BLOCK = 0.25
IN_FLIGHT = 3
VICTIM = "/items/{item_id}"
QUART = AppSpec("quart", "tests.apps.attribution_quart:app", "/metrics")
APP = AppSpec("attribution", "tests.apps.attribution_app:app", "/metrics")

STARTED_IN = {
    "/shape/gather": "gather",
    "/shape/create_task": "create_task",
    "/shape/taskgroup": "taskgroup",
    "/shape/anyio": "anyio_group",
    "/shape/nested": "parent",  # the grandchild was started by the child
    "/shape/fire": "fire",
}
"""The function of the app that started the task which blocked, for the event's ``started_by``
(a streaming body's task is started by Starlette, not by the app)."""

SHAPES = [
    "/shape/gather",
    "/shape/create_task",
    pytest.param(
        "/shape/taskgroup",
        marks=pytest.mark.skipif(sys.version_info < (3, 11), reason="TaskGroup is 3.11+"),
    ),
    "/shape/anyio",
    "/shape/nested",
    "/shape/stream",
    "/shape/fire",
]


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def start(loop_name: str, tmp: Path, basehttp: str, spec: AppSpec = APP) -> Iterator[Server]:
    env = {"SW_STALL_THRESHOLD": "0.1", "SW_STATE_DIR": str(tmp), "SW_BASEHTTP": basehttp}
    with uvicorn(spec.target, args=("--loop", loop_name), env=env) as base:
        server = Server(spec, base)
        try:
            yield server
        finally:
            server.client.close()


@pytest.fixture(scope="module")
def server(loop_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start(loop_name, tmp_path_factory.mktemp("attribution"), "none")


def frozen_by(metrics: Metrics, route: str, culprit: str) -> float:
    return (
        metrics.value("stallwatch_request_frozen_seconds_total", route=route, culprit=culprit)
        or 0.0
    )


def fired_blocks(server: Server) -> list[float]:
    """The blocks of the fire-and-forget tasks so far, each measured around the call."""
    blocks: list[float] = server.state()["fired"]
    return blocks


def block_while_others_wait(
    server: Server, shape: str, victim: str = VICTIM
) -> tuple[float, dict[str, Any], Metrics, Metrics]:
    """Block from ``shape`` while three requests wait; (blocked, its stall, before, after).

    The shape runs once without blocking first: its first call may import what it uses
    (anyio's backend takes tens of milliseconds), which is real loop time but not this block.
    """
    fired = len(fired_blocks(server))
    server.get(shape, seconds=0)
    if shape == "/shape/fire":
        poll(lambda: len(fired_blocks(server)) > fired, "the warm-up's task")
        fired += 1
    known = len(server.stalls())
    before = server.metrics()
    with requests_in_flight(server, IN_FLIGHT, delay=1.0):
        response = server.client.get(shape, params={"seconds": BLOCK})
        response.raise_for_status()
        if shape == "/shape/fire":
            poll(lambda: len(fired_blocks(server)) > fired, "the fired block")
            blocked = fired_blocks(server)[fired]
        else:
            blocked = float(response.text.splitlines()[-1].split(":")[1].rstrip("}"))
    stalls = poll(
        lambda: [s for s in server.stalls()[known:] if s["culprit"] == shape] or None,
        f"a stall blamed on {shape}",
    )
    assert len(stalls) == 1, stalls
    after = poll(
        lambda: (
            m
            if frozen_by(m := server.metrics(), victim, shape) > frozen_by(before, victim, shape)
            else None
        ),
        "the victims' frozen time",
    )
    return blocked, stalls[0], before, after


def assert_attributed(server: Server, shape: str, victim: str = VICTIM) -> None:
    blocked, stall, before, after = block_while_others_wait(server, shape, victim)
    assert stall["culprits"][shape] > 0.9, stall["culprits"]
    assert shape not in stall["victims"], stall["victims"]
    # The waiting requests are its victims (a request that has answered but not yet returned,
    # such as the test's last poll behind a BaseHTTPMiddleware, may be one too).
    assert stall["victims"][victim] == IN_FLIGHT, stall["victims"]
    assert blocked - 0.001 <= stall["duration"] <= blocked + max(0.005, 0.05 * blocked)
    assert stall["top_frame"].endswith("in block_sleep"), stall["top_frame"]
    if shape in STARTED_IN:
        location, function = stall["started_by"].rsplit(" in ", 1)
        assert location.split(":")[0].endswith("attribution_app.py"), stall["started_by"]
        assert function == STARTED_IN[shape]

    # The culprit request waited only on its own tasks: none of that is frozen time.
    own = frozen_by(after, shape, shape) - frozen_by(before, shape, shape)
    background = frozen_by(after, shape, BACKGROUND) - frozen_by(before, shape, BACKGROUND)
    assert own == pytest.approx(0.0, abs=0.002)
    assert background < 0.02, background

    # Each waiting request was frozen by the shape's route for the time the block took.
    per_victim = (frozen_by(after, victim, shape) - frozen_by(before, victim, shape)) / IN_FLIGHT
    tolerance = max(0.002, 0.05 * blocked)
    assert blocked - tolerance <= per_victim <= blocked + tolerance, (per_victim, blocked)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_block_in_a_task_the_request_started_names_the_requests_route(
    server: Server, shape: str
) -> None:
    assert_attributed(server, shape)


@pytest.mark.parametrize("basehttp", ["inside", "outside"])
def test_a_block_behind_a_base_http_middleware_names_the_route(
    loop_name: str, basehttp: str, tmp_path: Path
) -> None:
    for server in start(loop_name, tmp_path, basehttp):
        assert_attributed(server, "/shape/direct")
        assert_attributed(server, "/shape/gather")


def test_quart_handlers_which_run_in_tasks_of_their_own_name_their_url_rule(
    loop_name: str, tmp_path: Path
) -> None:
    for server in start(loop_name, tmp_path, "none", QUART):
        assert_attributed(server, "/shape/direct", victim="/items/<int:item_id>")


def test_route_loop_time_counts_the_requests_tasks(server: Server) -> None:
    before = server.metrics()
    response = server.client.get("/shape/nested", params={"seconds": 0.05})
    blocked = response.json()["blocked"]
    after = poll(
        lambda: (
            m
            if (m := server.metrics()).value(
                "stallwatch_route_loop_busy_seconds_total", route="/shape/nested"
            )
            != before.value("stallwatch_route_loop_busy_seconds_total", route="/shape/nested")
            else None
        ),
        "the route's busy time",
    )
    busy = (after.value("stallwatch_route_loop_busy_seconds_total", route="/shape/nested") or 0) - (
        before.value("stallwatch_route_loop_busy_seconds_total", route="/shape/nested") or 0
    )
    assert blocked <= busy <= blocked + 0.01
    hold_sum = "stallwatch_route_loop_hold_seconds_sum"
    longest = (after.value(hold_sum, route="/shape/nested") or 0) - (
        before.value(hold_sum, route="/shape/nested") or 0
    )
    assert blocked <= longest <= blocked + 0.005  # the longest step was the grandchild's


def test_no_internal_error_and_no_unrouted_name(server: Server) -> None:
    text = httpx.get(f"{server.base}/metrics").text
    assert "<unrouted>" not in text
    assert Metrics(text).internal_errors() == 0


def test_requests_pipelined_behind_a_request_are_not_its_tasks(server: Server) -> None:
    """uvicorn starts a pipelined request's task from inside the previous request's send, in
    its context: that task is the new request's, not one the previous request started."""
    busy = "stallwatch_route_loop_busy_seconds_total"
    before = server.metrics()
    connection = RawConnection(server.base)
    try:
        connection.send_get("/shape/direct?seconds=0.05")
        for item in range(20):
            connection.send_get(f"/items/{item}")
        status, body = connection.read_response()
        assert status == 200
        blocked = json.loads(body)["blocked"]
        assert [connection.read_response()[0] for _ in range(20)] == [200] * 20
    finally:
        connection.close()
    after = poll(
        lambda: (
            m
            if ((m := server.metrics()).value(busy, route=VICTIM) or 0)
            > (before.value(busy, route=VICTIM) or 0)
            else None
        ),
        "the pipelined requests' busy time",
    )
    direct = (after.value(busy, route="/shape/direct") or 0) - (
        before.value(busy, route="/shape/direct") or 0
    )
    assert blocked <= direct <= blocked + 0.005, (direct, blocked)
