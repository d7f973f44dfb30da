"""``server_timing=True``: every HTTP response says how long its request held the loop and how
long it waited while others held it, in the ``Server-Timing`` header devtools and APMs show."""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Any

from prometheus_client import CollectorRegistry

from stallwatch import StallwatchMiddleware

BLOCK = 0.1


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["path"] == "/block":
        began = time.perf_counter()
        time.sleep(BLOCK)  # noqa: ASYNC251 - the block the other request pays for
        BLOCKED.append(time.perf_counter() - began)
    else:
        await asyncio.sleep(2 * BLOCK)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b"ok"})


BLOCKED: list[float] = []
"""Each block as measured around the call: what the figures are checked against."""
QUEUED: list[float] = []
"""Seconds the process's threads waited for a CPU during each run (Linux schedstat; 0 where
not told). A loaded host keeps the loop thread off a CPU now and then, or the watchdog thread
while it holds the GIL the loop thread needs: the loop is held that long too, and every
request in flight rightly counts it as frozen time. On a quiet machine it is about 0."""


def queue_wait() -> float | None:
    """Seconds this process's live threads have waited in the run queue, all together."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9


HEADERS = [(b"content-type", b"text/plain")]
"""One list for every response: the app's own headers must come out of the middleware as
they went in (the header is added to a copy)."""


async def call(middleware: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    await middleware(scope, receive, send)
    return sent


def timings(message: dict[str, Any]) -> dict[str, float]:
    (value,) = [v.decode() for k, v in message["headers"] if k == b"server-timing"]
    return {name: float(dur) for name, dur in re.findall(r"([\w-]+);dur=([\d.]+)", value)}


def by_path(scope: Any) -> str:
    path: str = scope["path"]
    return path


def run_pair(server_timing: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    middleware = StallwatchMiddleware(
        app, registry=CollectorRegistry(), route_resolver=by_path, server_timing=server_timing
    )

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        # Read inside the loop's life: the watchdog thread starts with the first request and
        # is gone once the loop closes, its figures with it.
        before = queue_wait()
        waiting = asyncio.create_task(call(middleware, "/wait"))
        await asyncio.sleep(0.02)  # the waiting request is in its await now
        blocking = await call(middleware, "/block")
        pair = await waiting, blocking
        after = queue_wait()
        QUEUED.append(after - before if before is not None and after is not None else 0.0)
        return pair

    return asyncio.run(main())


def test_each_response_says_what_its_request_held_and_what_it_waited_for() -> None:
    waited, blocked = run_pair(server_timing=True)
    waiting = timings(waited[0])
    blocking = timings(blocked[0])
    block_ms = BLOCKED[-1] * 1e3
    slack = max(2.0, 0.05 * block_ms) + QUEUED[-1] * 1e3
    assert set(waiting) == {"loop-hold", "loop-frozen"}
    # The blocking request held the loop (its response starts inside the step that blocked:
    # that step counts as held so far) and was frozen by no one.
    assert block_ms - 0.5 <= blocking["loop-hold"] <= block_ms + slack
    assert blocking["loop-frozen"] < 5.0
    # The waiting request was frozen for the block, within the clock's and the machine's slack.
    assert block_ms - 0.5 <= waiting["loop-frozen"] <= block_ms + slack
    assert waiting["loop-hold"] < 5.0
    assert HEADERS == [(b"content-type", b"text/plain")]  # the app's list is untouched


def test_off_by_default_the_response_is_the_apps_own() -> None:
    waited, blocked = run_pair(server_timing=False)
    for message in (waited[0], blocked[0]):
        assert message["headers"] is HEADERS
