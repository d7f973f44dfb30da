"""``tasks.py``: the tasks a request starts are timed for it, through the loop's task factory,
which stallwatch chains in front of whatever factory the application or server set.

In-process, on real event loops: the subject is which request a task's steps are charged to
and that the app's own factory still runs, not how a server delivers requests.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stallwatch import LoopMonitor, StallwatchMiddleware
from stallwatch.spans import Steps

BLOCK = 0.08
THRESHOLD = 0.04

Handler = Callable[[], Awaitable[None]]


def by_path(scope: Any) -> str:
    path: str = scope["path"]
    return path


async def request(app: Any, path: str) -> list[dict[str, Any]]:
    """One HTTP request through ``app`` in this loop; the messages it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    return sent


def app_running(work: dict[str, Handler]) -> Callable[..., Awaitable[None]]:
    """A bare ASGI app: ``work[path]()``, then a 200."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await work[scope["path"]]()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def nothing() -> None:
    await asyncio.sleep(0)


def block() -> float:
    began = time.perf_counter()
    time.sleep(BLOCK)
    return time.perf_counter() - began


def busy_seconds(registry: CollectorRegistry, route: str) -> float:
    value = registry.get_sample_value("stallwatch_route_loop_busy_seconds_total", {"route": route})
    return value or 0.0


async def settle(monitor: LoopMonitor) -> None:
    """Let the loop poll once more, so the stall has ended and been handed over, then wait
    for the watchdog to record it and flush the counts."""
    for _ in range(200):
        await asyncio.sleep(0.01)
        if monitor.recent_stalls():
            break
    monitor.flush()


def recording_factory(created: list[object]) -> Callable[..., Any]:
    """An application's own task factory, which notes every coroutine it is handed."""

    def recording(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    return recording


def middleware(app: Any, registry: CollectorRegistry) -> StallwatchMiddleware:
    return StallwatchMiddleware(
        app, registry=registry, stall_threshold=THRESHOLD, route_resolver=by_path
    )


def test_a_factory_the_app_set_before_is_chained_and_the_task_is_the_requests() -> None:
    created: list[object] = []
    recording = recording_factory(created)

    async def work() -> None:
        async def child() -> None:
            await asyncio.sleep(0)
            blocked.append(block())

        await asyncio.create_task(child())

    blocked: list[float] = []
    registry = CollectorRegistry()

    async def main() -> tuple[LoopMonitor, float]:
        asyncio.get_running_loop().set_task_factory(recording)
        app = middleware(app_running({"/work": work}), registry)
        await request(app, "/work")
        assert app.monitor is not None
        await settle(app.monitor)
        return app.monitor, busy_seconds(registry, "/work")

    monitor, busy = asyncio.run(main())
    (stall,) = monitor.recent_stalls()
    assert stall.culprit == "/work"
    assert any(isinstance(coro, Steps) for coro in created)  # ours wrapped, theirs created
    assert blocked[0] <= busy <= blocked[0] + 0.01


def test_a_factory_set_after_stallwatch_started_is_chained_at_the_next_heartbeat() -> None:
    created: list[object] = []
    recording = recording_factory(created)

    async def work() -> None:
        async def child() -> None:
            block()

        await asyncio.gather(child())

    registry = CollectorRegistry()

    async def main() -> LoopMonitor:
        app = middleware(app_running({"/noop": nothing, "/work": work}), registry)
        await request(app, "/noop")  # starts the monitor
        asyncio.get_running_loop().set_task_factory(recording)
        await asyncio.sleep(0.25)  # a flush cadence of heartbeats: ours is in front again
        await request(app, "/work")
        assert app.monitor is not None
        await settle(app.monitor)
        return app.monitor

    monitor = asyncio.run(main())
    assert [stall.culprit for stall in monitor.recent_stalls()] == ["/work"]
    assert any(isinstance(coro, Steps) for coro in created)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+")
def test_an_eager_tasks_first_step_counts_once_for_its_request() -> None:
    blocked: list[float] = []

    async def work() -> None:
        async def child() -> None:
            blocked.append(block())  # runs inside create_task, within the handler's step
            await asyncio.sleep(0)

        await asyncio.create_task(child())

    registry = CollectorRegistry()

    async def main() -> tuple[LoopMonitor, float]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        app = middleware(app_running({"/eager": work}), registry)
        await request(app, "/eager")
        assert app.monitor is not None
        await settle(app.monitor)
        return app.monitor, busy_seconds(registry, "/eager")

    monitor, busy = asyncio.run(main())
    (stall,) = monitor.recent_stalls()
    assert stall.culprit == "/eager"
    assert stall.culprits["/eager"] <= 1.0 + 1e-9
    assert blocked[0] <= busy <= blocked[0] + 0.01  # once, not twice


def test_tasks_outside_any_request_are_left_alone() -> None:
    async def main() -> tuple[object, str]:
        monitor = LoopMonitor(registry=CollectorRegistry())
        monitor.start()
        try:

            async def plain() -> None:
                await asyncio.sleep(0)

            task = asyncio.create_task(plain())
            await task
            return task.get_coro(), repr(task)
        finally:
            monitor.stop()

    coro, text = asyncio.run(main())
    assert asyncio.iscoroutine(coro)
    assert not isinstance(coro, Steps)
    assert "plain" in text


def test_a_requests_task_still_reads_as_its_coroutine() -> None:
    seen: list[tuple[str, bool]] = []

    async def work() -> None:
        async def named_child() -> None:
            await asyncio.sleep(0)

        task = asyncio.create_task(named_child())
        await asyncio.sleep(0)
        seen.append((repr(task), bool(task.get_stack())))
        await task

    async def main() -> None:
        await request(middleware(app_running({"/t": work}), CollectorRegistry()), "/t")

    asyncio.run(main())
    ((text, has_stack),) = seen
    assert "named_child" in text
    assert has_stack


def test_stopping_the_monitor_gives_the_loop_its_factory_back() -> None:
    def theirs(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main() -> tuple[object, object, object]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(theirs)
        monitor = LoopMonitor(registry=CollectorRegistry())
        monitor.start()
        during = loop.get_task_factory()
        monitor.stop()
        await asyncio.sleep(0)
        return theirs, during, loop.get_task_factory()

    original, during, after = asyncio.run(main())
    assert during is not original
    assert after is original
