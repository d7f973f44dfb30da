"""``tasks.py``: the tasks a request starts are timed for it, step by step where the loop
schedules each step; the loop's task factory, which stallwatch chains in front of whatever
factory the application or server set, still creates the app's own coroutine's task.

In-process, on real event loops: the subject is which request a task's steps are charged to
and that the app's own factory still runs, not how a server delivers requests.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import sys
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stallwatch import LoopMonitor, StallwatchMiddleware

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
    assert created
    assert all(type(coro) is types.CoroutineType for coro in created)
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
    assert created
    assert all(type(coro) is types.CoroutineType for coro in created)


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
    assert type(coro) is types.CoroutineType
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


# -- the contract others read: a request's task is the app's task, to every reader ------------


async def observe_a_child_task() -> dict[str, Any]:
    """What ``inspect``, asyncio and a reader of frames see of a task, at each of its states."""
    seen: dict[str, Any] = {}
    gate = asyncio.Event()

    async def child(x: int) -> int:
        local = x + 1
        seen["running"] = inspect.getcoroutinestate(task.get_coro())  # type: ignore[arg-type]
        await gate.wait()
        return local

    coro = child(41)
    task = asyncio.get_running_loop().create_task(coro, name="the-child")
    seen["same coroutine"] = task.get_coro() is coro
    seen["type"] = type(task.get_coro()).__name__
    seen["created"] = inspect.getcoroutinestate(coro)
    seen["iscoroutine"] = (inspect.iscoroutine(task.get_coro()), asyncio.iscoroutine(coro))
    await asyncio.sleep(0)
    seen["suspended"] = inspect.getcoroutinestate(coro)
    seen["locals"] = sorted(inspect.getcoroutinelocals(coro))
    seen["repr"] = repr(task).split(" cb=")[0].replace(hex(id(task)), "ID")
    seen["stack"] = [f.f_code.co_name for f in task.get_stack()]
    printed = io.StringIO()
    task.print_stack(file=printed)
    seen["print_stack"] = printed.getvalue().count("in child")
    seen["cr_await"] = type(coro.cr_await).__name__
    gate.set()
    seen["result"] = await task
    seen["closed"] = inspect.getcoroutinestate(coro)
    return seen


def observe(watched: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}

    async def work() -> None:
        result.update(await observe_a_child_task())

    async def main() -> None:
        app: Any = app_running({"/look": work})
        if watched:
            app = middleware(app, CollectorRegistry())
        await request(app, "/look")

    asyncio.run(main())
    return result


def test_a_requests_task_looks_to_inspect_asyncio_and_debuggers_exactly_as_bare() -> None:
    bare, watched = observe(watched=False), observe(watched=True)
    assert watched == bare
    assert watched["same coroutine"] is True
    assert watched["type"] == "coroutine"
    assert watched["running"] == inspect.CORO_RUNNING
    assert watched["suspended"] == inspect.CORO_SUSPENDED
    assert {"x", "local"} <= set(watched["locals"])
    assert watched["result"] == 42


def test_anyio_cancels_a_requests_task_group_as_it_does_bare() -> None:
    """The defect of issue 15: ``BaseHTTPMiddleware`` runs the app in an anyio task group and
    cancels it once the response is read; anyio delivers that cancellation from a loop
    callback that reads each task's coroutine state. The request must be answered."""
    import httpx
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"got": len(await request.body())})

    async def passthrough(request: Request, call_next: Any) -> Any:
        return await call_next(request)

    inner = Starlette(
        routes=[Route("/echo", echo, methods=["POST"])],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=passthrough)],
    )

    async def main() -> Any:
        app = StallwatchMiddleware(inner, registry=CollectorRegistry())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await asyncio.wait_for(client.post("/echo", content=b"x" * 14), 5)
        return response.json()

    assert asyncio.run(main()) == {"got": 14}


def test_a_requests_tasks_steps_are_timed_where_the_loop_schedules_them() -> None:
    """Neither the loop's class nor any task is changed: ``call_soon`` of this one loop is
    stallwatch's while a task a request started is alive, the loop's own again once the
    heartbeat sees them all done, and when the monitor stops."""

    async def main() -> dict[str, bool]:
        loop = asyncio.get_running_loop()
        seen: dict[str, bool] = {}

        async def child() -> None:
            await asyncio.sleep(0)
            seen["child"] = "call_soon" in vars(loop)

        async def work() -> None:
            seen["before"] = "call_soon" in vars(loop)
            await asyncio.create_task(child())

        app = middleware(app_running({"/w": work}), CollectorRegistry())
        await request(app, "/w")
        assert app.monitor is not None
        seen["after"] = "call_soon" in vars(loop)
        for _ in range(100):  # the heartbeat looks every tenth beat (100 ms)
            await asyncio.sleep(0.01)
            if "call_soon" not in vars(loop):
                break
        seen["later"] = "call_soon" in vars(loop)
        await request(app, "/w")
        seen["again"] = "call_soon" in vars(loop)
        app.monitor.stop()
        await asyncio.sleep(0)
        seen["stopped"] = "call_soon" in vars(loop)
        seen["on_class"] = loop.call_soon.__func__ is type(loop).call_soon  # type: ignore[attr-defined]
        return seen

    seen = asyncio.run(main())
    assert seen == {
        "before": False,  # a route that starts no task never meets it
        "child": True,
        "after": True,
        "later": False,
        "again": True,
        "stopped": False,
        "on_class": True,
    }


def test_a_call_soon_set_in_front_of_stallwatchs_keeps_it_and_runs_once() -> None:
    """Another tool that sets the loop's ``call_soon`` over ours (and calls ours) is never
    taken out from under: ours stays, and a request's task step is still timed once."""

    async def main() -> tuple[bool, int, float]:
        loop = asyncio.get_running_loop()
        calls = 0

        async def child() -> None:
            await asyncio.sleep(0)
            blocked.append(block())

        async def work() -> None:
            await asyncio.create_task(child())

        blocked: list[float] = []
        registry = CollectorRegistry()
        app = middleware(app_running({"/w": work}), registry)
        await request(app, "/w")
        ours = loop.call_soon

        def theirs(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return ours(*args, **kwargs)

        loop.call_soon = theirs  # type: ignore[method-assign]
        for _ in range(30):  # three looks of the heartbeat, which would give ours back
            await asyncio.sleep(0.01)
        calls_before = calls
        await request(app, "/w")
        assert app.monitor is not None
        app.monitor.flush()
        still = loop.call_soon is theirs
        del loop.call_soon
        app.monitor.stop()
        return still, calls - calls_before, busy_seconds(registry, "/w") - sum(blocked)

    still, calls, extra = asyncio.run(main())
    assert still
    assert calls > 0
    assert 0.0 <= extra < 0.02  # two requests, each child's block counted once, not twice


@pytest.mark.skipif(sys.version_info < (3, 11), reason="create_task(context=) is 3.11+")
def test_a_task_handed_a_requests_context_is_the_requests_from_its_first_step() -> None:
    """A task made with an explicit ``context=`` that carries the request is timed for it
    though no other task of the request put ``call_soon`` in front of the loop's first."""
    import contextvars

    blocked: list[float] = []

    async def child() -> None:
        blocked.append(block())  # its first step: scheduled while the task is made

    async def work() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_task(child(), context=contextvars.copy_context())

    registry = CollectorRegistry()

    async def main() -> float:
        app = middleware(app_running({"/ctx": work}), registry)
        await request(app, "/ctx")
        assert app.monitor is not None
        app.monitor.flush()
        busy = busy_seconds(registry, "/ctx")
        app.monitor.stop()
        return busy

    busy = asyncio.run(main())
    assert blocked[0] <= busy <= blocked[0] + 0.01
