"""``stallwatch.pools``: the default executor's and anyio's pools, observed without changing
how their work runs.

The rules first (pure functions), then the counts on an injected clock, then real loops
(asyncio and uvloop) with real threads, then real uvicorn with the issue's figures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
import uvloop
from prometheus_client import CollectorRegistry, Gauge, Histogram

from stallwatch import BACKGROUND
from stallwatch.pools import ANYIO, DEFAULT, PoolMetrics, PoolWatch
from stallwatch.pools.readings import (
    MAX_ROUTES,
    OTHER,
    PoolReading,
    RouteWait,
    capacity_of,
    default_executor_size,
    idle_threads,
    pools_view,
    route_label,
    threads_during,
    tokens,
)
from stallwatch.pools.state import DONE, DROPPED, QUEUED, RUNNING, Pool
from tests.middleware_support import Metrics, RawConnection
from tests.servers import free_port, uvicorn


def pool_metrics(registry: CollectorRegistry) -> PoolMetrics:
    buckets = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
    return PoolMetrics(
        queue_wait=Histogram(
            "stallwatch_executor_queue_wait_seconds", "w", ["pool", "route"],
            buckets=buckets, registry=registry,
        ),
        run=Histogram(
            "stallwatch_executor_run_seconds", "r", ["pool", "route"],
            buckets=buckets, registry=registry,
        ),
        threads=Gauge("stallwatch_executor_threads", "t", ["pool", "state"], registry=registry),
        waiting=Gauge("stallwatch_executor_waiting", "q", ["pool"], registry=registry),
    )  # fmt: skip


# -- the rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "busy", "idle"),
    [(None, 3, None), (6, 0, 6), (6, 4, 2), (6, 6, 0), (2, 3, 0)],
)
def test_idle_is_the_capacity_no_job_occupies(capacity: int | None, busy: int, idle: int) -> None:
    assert idle_threads(capacity, busy) == idle
    assert PoolReading("default", busy, 0, capacity).idle == idle


def test_routes_past_the_cap_share_one_label() -> None:
    known = {f"/r{i}" for i in range(MAX_ROUTES)}
    assert route_label("/new", set()) == "/new"
    assert route_label("/r7", known) == "/r7"  # a route seen before keeps its name
    assert route_label("/new", known) == OTHER
    assert route_label("/b", {"/a"}, cap=1) == OTHER


@pytest.mark.parametrize(
    ("before", "after", "window", "threads"),
    [(0.0, 0.6, 0.1, 6.0), (1.0, 1.0, 0.5, 0.0), (2.0, 2.05, 0.1, 0.5), (0.0, 1.0, 0.0, None)],
)
def test_threads_during_is_busy_seconds_over_the_window(
    before: float, after: float, window: float, threads: float | None
) -> None:
    result = threads_during(before, after, window)
    assert result == threads if threads is None else result == pytest.approx(threads)


def test_sizes() -> None:
    assert capacity_of(concurrent.futures.ThreadPoolExecutor(3)) == 3
    assert capacity_of(object()) is None
    assert capacity_of(concurrent.futures.ThreadPoolExecutor()) == default_executor_size()
    assert tokens(40) == 40
    assert tokens(2.0) == 2
    assert tokens(float("inf")) is None
    assert tokens(True) is None
    assert tokens("40") is None


# -- the counts, on an injected clock ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gauges(registry: CollectorRegistry, pool: str) -> tuple[float | None, ...]:
    value = registry.get_sample_value
    return (
        value("stallwatch_executor_waiting", {"pool": pool}),
        value("stallwatch_executor_threads", {"pool": pool, "state": "busy"}),
        value("stallwatch_executor_threads", {"pool": pool, "state": "idle"}),
    )


def test_a_job_waits_runs_and_is_counted_by_route() -> None:
    registry = CollectorRegistry()
    clock = Clock()
    errors: list[int] = []
    pool = Pool(DEFAULT, pool_metrics(registry), lambda: errors.append(1), clock)
    job = pool.submit(lambda x: x * 2, "/a", capacity=2)
    assert gauges(registry, DEFAULT) == (1.0, 0.0, 2.0)
    clock.now += 0.030
    began = pool.started(job)
    assert job.state == RUNNING
    assert gauges(registry, DEFAULT) == (0.0, 1.0, 1.0)
    clock.now += 0.010
    assert pool.busy_seconds() == pytest.approx(0.010)
    pool.finished(job, began)
    assert job.state == DONE
    assert gauges(registry, DEFAULT) == (0.0, 0.0, 2.0)
    labels = {"pool": DEFAULT, "route": "/a"}
    value = registry.get_sample_value
    assert value("stallwatch_executor_queue_wait_seconds_count", labels) == 1
    assert value("stallwatch_executor_queue_wait_seconds_sum", labels) == pytest.approx(0.030)
    assert value("stallwatch_executor_run_seconds_sum", labels) == pytest.approx(0.010)
    wait = pool.routes()["/a"]
    assert wait.jobs == 1
    assert wait.mean_wait == pytest.approx(0.03)
    assert wait.longest_wait == pytest.approx(0.03)
    assert errors == []


def test_a_job_cancelled_before_it_started_stops_waiting_once() -> None:
    registry = CollectorRegistry()
    pool = Pool(ANYIO, pool_metrics(registry), lambda: None, Clock())
    job = pool.submit(print, BACKGROUND, capacity=None)
    job.settle()
    job.settle()
    assert job.state == DROPPED
    assert pool.reading() == PoolReading(ANYIO, 0, 0, None)
    # A thread took it after all (anyio's abandoned work, a lost race): it runs, once.
    began = pool.started(job)
    assert pool.reading().busy == 1
    assert pool.reading().waiting == 0
    pool.finished(job, began)
    assert gauges(registry, ANYIO) == (0.0, 0.0, 0.0)  # capacity unknown: idle says 0


def test_closing_takes_only_this_pools_share_out_of_the_gauges() -> None:
    registry = CollectorRegistry()
    metrics = pool_metrics(registry)
    first = Pool(DEFAULT, metrics, lambda: None, Clock())
    second = Pool(DEFAULT, metrics, lambda: None, Clock())  # another loop's, same labels
    running = first.submit(print, "/a", capacity=4)
    first.started(running)
    first.submit(print, "/a", capacity=4)
    second.submit(print, "/b", capacity=4)
    assert gauges(registry, DEFAULT) == (2.0, 1.0, 7.0)
    first.close()
    assert gauges(registry, DEFAULT) == (1.0, 0.0, 4.0)
    first.finished(running, 0.0)  # ends after its loop stopped watching: counted nowhere
    assert gauges(registry, DEFAULT) == (1.0, 0.0, 4.0)


def test_queued_is_the_initial_state() -> None:
    pool = Pool(DEFAULT, pool_metrics(CollectorRegistry()), lambda: None, Clock())
    assert pool.submit(print, "/", capacity=1).state == QUEUED


# -- real loops, real threads -----------------------------------------------------------------

LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def watched(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    registry: CollectorRegistry,
    main: Callable[[asyncio.AbstractEventLoop, PoolWatch], Any],
    route: str = BACKGROUND,
) -> Any:
    """Run ``main(loop, watch)`` on a fresh loop watched by a ``PoolWatch``."""
    loop = new_loop()
    errors: list[int] = []
    watch = PoolWatch(
        loop, pool_metrics(registry), lambda: errors.append(1), route_of=lambda: route
    )

    async def run() -> Any:
        watch.install()
        try:
            return await main(loop, watch)
        finally:
            watch.uninstall()

    try:
        return loop.run_until_complete(run())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        assert errors == []


@pytest.mark.parametrize("new_loop", LOOPS)
def test_the_executor_the_app_set_still_runs_its_work(
    new_loop: Callable[[], asyncio.AbstractEventLoop], registry: CollectorRegistry
) -> None:
    async def main(loop: asyncio.AbstractEventLoop, watch: PoolWatch) -> tuple[str, str]:
        mine = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="mine")
        loop.set_default_executor(mine)
        names = await asyncio.gather(
            loop.run_in_executor(None, lambda: threading.current_thread().name),
            asyncio.to_thread(lambda: threading.current_thread().name),
        )
        assert watch.readings()[0] == PoolReading(DEFAULT, 0, 0, 2)
        return names

    names = watched(new_loop, registry, main)
    assert all(name.startswith("mine") for name in names), names
    count = registry.get_sample_value(
        "stallwatch_executor_run_seconds_count", {"pool": DEFAULT, "route": BACKGROUND}
    )
    assert count == 2


@pytest.mark.parametrize("new_loop", LOOPS)
def test_results_exceptions_and_other_executors_pass_unchanged(
    new_loop: Callable[[], asyncio.AbstractEventLoop], registry: CollectorRegistry
) -> None:
    class Boom(Exception):
        pass

    def fail() -> None:
        raise Boom("from the thread")

    async def main(loop: asyncio.AbstractEventLoop, watch: PoolWatch) -> None:
        assert await loop.run_in_executor(None, divmod, 7, 2) == (3, 1)
        with pytest.raises(Boom, match="from the thread"):
            await loop.run_in_executor(None, fail)
        other = concurrent.futures.ThreadPoolExecutor(1)
        assert await loop.run_in_executor(other, divmod, 9, 4) == (2, 1)
        other.shutdown()

    watched(new_loop, registry, main)
    labels = {"pool": DEFAULT, "route": BACKGROUND}
    assert registry.get_sample_value("stallwatch_executor_run_seconds_count", labels) == 2


@pytest.mark.parametrize("new_loop", LOOPS)
def test_queued_work_cancelled_stops_waiting(
    new_loop: Callable[[], asyncio.AbstractEventLoop], registry: CollectorRegistry
) -> None:
    release = threading.Event()

    async def main(loop: asyncio.AbstractEventLoop, watch: PoolWatch) -> None:
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        holder = loop.run_in_executor(None, release.wait, 5.0)
        queued = [loop.run_in_executor(None, time.sleep, 0) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert watch.readings()[0] == PoolReading(DEFAULT, 1, 3, 1)
        for future in queued:
            future.cancel()
        await asyncio.sleep(0.01)  # the done callbacks run on the loop
        assert watch.readings()[0] == PoolReading(DEFAULT, 1, 0, 1)
        release.set()
        await holder
        assert gauges(registry, DEFAULT) == (0.0, 0.0, 1.0)

    watched(new_loop, registry, main)
    assert gauges(registry, DEFAULT) == (0.0, 0.0, 0.0)  # the watch's share, taken out


@pytest.mark.parametrize("new_loop", LOOPS)
def test_uninstall_gives_the_loop_its_own_methods_back(
    new_loop: Callable[[], asyncio.AbstractEventLoop], registry: CollectorRegistry
) -> None:
    from anyio._backends._asyncio import AsyncIOBackend

    before = AsyncIOBackend.__dict__["run_sync_in_worker_thread"]

    async def main(loop: asyncio.AbstractEventLoop, watch: PoolWatch) -> asyncio.AbstractEventLoop:
        assert "run_in_executor" in vars(loop)
        assert AsyncIOBackend.__dict__["run_sync_in_worker_thread"] is not before
        return loop

    loop = watched(new_loop, registry, main)
    assert "run_in_executor" not in vars(loop)
    assert "set_default_executor" not in vars(loop)
    assert AsyncIOBackend.__dict__["run_sync_in_worker_thread"] is before


@pytest.mark.parametrize("new_loop", LOOPS)
def test_anyio_default_limiter_is_the_anyio_pool(
    new_loop: Callable[[], asyncio.AbstractEventLoop], registry: CollectorRegistry
) -> None:
    async def main(loop: asyncio.AbstractEventLoop, watch: PoolWatch) -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 2
        started = time.perf_counter()
        await asyncio.gather(*(anyio.to_thread.run_sync(time.sleep, 0.05) for _ in range(4)))
        assert time.perf_counter() - started >= 0.095  # two rounds of two: the limiter held
        own = anyio.CapacityLimiter(1)
        await anyio.to_thread.run_sync(time.sleep, 0, limiter=own)  # the app's: not counted
        assert watch.readings()[1] == PoolReading(ANYIO, 0, 0, 2)

    watched(new_loop, registry, main, route="/sync")
    labels = {"pool": ANYIO, "route": "/sync"}
    value = registry.get_sample_value
    assert value("stallwatch_executor_run_seconds_count", labels) == 4
    # Two started at once, two waited for a token for about one job each.
    assert 0.09 <= value("stallwatch_executor_queue_wait_seconds_sum", labels) <= 0.3  # type: ignore[operator]


def test_anyio_work_cancelled_while_waiting_for_a_token(registry: CollectorRegistry) -> None:
    release = threading.Event()

    async def main(loop: asyncio.AbstractEventLoop, watch: PoolWatch) -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        holder = asyncio.ensure_future(anyio.to_thread.run_sync(release.wait, 5.0))
        waiter = asyncio.ensure_future(anyio.to_thread.run_sync(time.sleep, 0))
        await asyncio.sleep(0.05)
        assert watch.readings()[1] == PoolReading(ANYIO, 1, 1, 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert watch.readings()[1] == PoolReading(ANYIO, 1, 0, 1)
        release.set()
        await holder
        assert gauges(registry, ANYIO) == (0.0, 0.0, 1.0)

    watched(asyncio.new_event_loop, registry, main)
    assert gauges(registry, ANYIO) == (0.0, 0.0, 0.0)  # the watch's share, taken out


def test_a_loop_nobody_watches_is_left_alone(registry: CollectorRegistry) -> None:
    async def other_loop() -> str:
        await anyio.to_thread.run_sync(time.sleep, 0)
        return "done"

    async def main(loop: asyncio.AbstractEventLoop, watch: PoolWatch) -> None:
        # anyio's method is ours now, process-wide; another loop's work passes through.
        result: list[str] = []
        thread = threading.Thread(target=lambda: result.append(asyncio.run(other_loop())))
        thread.start()
        await asyncio.to_thread(thread.join)
        assert result == ["done"]

    watched(asyncio.new_event_loop, registry, main)
    assert (
        registry.get_sample_value(
            "stallwatch_executor_run_seconds_count", {"pool": ANYIO, "route": BACKGROUND}
        )
        is None
    )


def test_busy_seconds_tell_how_many_threads_ran(registry: CollectorRegistry) -> None:
    async def main(loop: asyncio.AbstractEventLoop, watch: PoolWatch) -> float | None:
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(4))
        before, began = watch.busy_seconds(), time.perf_counter()
        await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.2) for _ in range(4)))
        return threads_during(before, watch.busy_seconds(), time.perf_counter() - began)

    threads = watched(asyncio.new_event_loop, registry, main)
    assert threads is not None
    assert 3.0 <= threads <= 4.0


# -- real uvicorn: the figures ----------------------------------------------------------

APP = "tests.apps.pools_app:app"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_queue_wait_by_route_is_the_wait_the_app_measured(loop: str) -> None:
    """A pool of one thread, two routes submitting 20 ms jobs at once: each route's mean wait
    within max(2 ms, 5 %) of what the app measured around its own submissions."""
    env = {"SW_POOL_SIZE": "1", "SW_JOB": "0.02"}
    with uvicorn(APP, args=("--loop", loop), env=env, ready_path="/state") as base:
        connections = [RawConnection(base) for _ in range(20)]
        try:
            for i, connection in enumerate(connections):
                connection.send_get(f"/{'ab'[i % 2]}/{i}")
            assert [c.read_response()[0] for c in connections] == [200] * 20
        finally:
            for connection in connections:
                connection.close()
        state = httpx.get(base + "/state").json()
        metrics = Metrics(httpx.get(base + "/metrics").text)
    for route in ("/a/{n}", "/b/{n}"):
        measured = state["waits"][route]
        labels = {"pool": DEFAULT, "route": route}
        count = metrics.value("stallwatch_executor_queue_wait_seconds_count", **labels)
        total = metrics.value("stallwatch_executor_queue_wait_seconds_sum", **labels)
        assert count == len(measured) == 10
        assert total is not None
        expected = sum(measured) / len(measured)
        assert expected > 0.05  # they did queue: 20 jobs of 20 ms through one thread
        assert abs(total / count - expected) <= max(0.002, 0.05 * expected), (route, total)
    # The app's executor ran every job, in its one thread.
    assert state["threads"] == ["app-pool_0"]
    assert metrics.value("stallwatch_executor_threads", pool=DEFAULT, state="idle") == 1
    assert metrics.value("stallwatch_executor_waiting", pool=DEFAULT) == 0


def test_anyio_limiter_of_two_the_waiting_gauge_and_the_wait_histogram_agree() -> None:
    """Eight 200 ms sync endpoints at once through two tokens: the gauge, scraped off the
    loop while they run, shows six waiting behind two busy threads, and its integral over
    time is the histogram's sum of waits (Little's law, counted two ways)."""
    port = free_port()
    env = {"SW_TOKENS": "2", "SW_SYNC": "0.2", "SW_METRICS_PORT": str(port)}
    samples: list[tuple[float, float, float, float]] = []
    stop = threading.Event()

    def scrape() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
            while not stop.is_set():
                text = client.get("/metrics").text
                now = time.monotonic()
                seen = Metrics(text)
                samples.append(
                    (
                        now,
                        seen.value("stallwatch_executor_waiting", pool=ANYIO) or 0.0,
                        seen.value("stallwatch_executor_threads", pool=ANYIO, state="busy") or 0.0,
                        seen.value("stallwatch_executor_threads", pool=ANYIO, state="idle") or 0.0,
                    )
                )
                time.sleep(0.005)

    with uvicorn(APP, env=env, ready_path="/state") as base:
        connections = [RawConnection(base) for _ in range(8)]
        sampler = threading.Thread(target=scrape)
        sampler.start()
        try:
            time.sleep(0.05)
            for i, connection in enumerate(connections):
                connection.send_get(f"/sync/{i}")
            assert [c.read_response()[0] for c in connections] == [200] * 8
            time.sleep(0.05)
        finally:
            stop.set()
            sampler.join()
            for connection in connections:
                connection.close()
        metrics = Metrics(httpx.get(base + "/metrics").text)
    labels = {"pool": ANYIO, "route": "/sync/{n}"}
    count = metrics.value("stallwatch_executor_queue_wait_seconds_count", **labels)
    total = metrics.value("stallwatch_executor_queue_wait_seconds_sum", **labels)
    assert count == 8
    assert total is not None
    # Waits of 0, 0, 0.2, 0.2, 0.4, 0.4, 0.6, 0.6 s, give or take the machine.
    assert 2.3 <= total <= 3.2, total
    # Six wait behind the two running for the first round (a moment more while the first two
    # reach their threads), then four, then two.
    assert max(waiting for _, waiting, _, _ in samples) <= 8
    for queued in (6, 4, 2):
        held = sum(
            later[0] - earlier[0]
            for earlier, later in itertools.pairwise(samples)
            if earlier[1] == queued
        )
        assert held >= 0.12, (queued, held)
    saturated = [(busy, idle) for _, waiting, busy, idle in samples if waiting > 0]
    assert sum(1 for busy, idle in saturated if (busy, idle) == (2, 0)) >= 0.9 * len(saturated)
    integral = sum(
        (later[0] - earlier[0]) * earlier[1] for earlier, later in itertools.pairwise(samples)
    )
    assert abs(integral - total) <= 0.1 * total + 0.05, (integral, total)
    assert samples[-1][1:] == (0.0, 0.0, 2.0)


def test_the_reports_view_ranks_routes_by_their_waiting() -> None:
    readings = (PoolReading(DEFAULT, 1, 3, 1), PoolReading(ANYIO, 0, 0, None))
    routes = {
        DEFAULT: {
            "/a": RouteWait(jobs=2, wait=0.04, longest_wait=0.03, run=0.04),
            "/b": RouteWait(jobs=1, wait=0.5, longest_wait=0.5, run=0.02),
        }
    }
    [default, anyio_pool] = pools_view(readings, routes)
    assert (default["busy"], default["idle"], default["waiting"]) == (1, 0, 3)
    assert [r["route"] for r in default["routes"]] == ["/b", "/a"]
    assert default["routes"][1]["mean_wait"] == pytest.approx(0.02)
    assert anyio_pool == {
        "pool": ANYIO, "busy": 0, "idle": None, "capacity": None, "waiting": 0, "routes": []
    }  # fmt: skip


# -- through a LoopMonitor: a stall says how many pool threads ran in it -------------------------


def hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_stall_says_how_many_pool_threads_ran_during_it(loop: str) -> None:
    """Four default-executor jobs running while the loop is held 150 ms: the stall event says
    about four pool threads; the monitor's own pools are what the report shows."""
    from stallwatch import LoopMonitor

    async def main() -> tuple[list[Any], list[PoolReading]]:
        async with LoopMonitor(registry=CollectorRegistry(), stall_threshold=0.05) as monitor:
            loop_ = asyncio.get_running_loop()
            loop_.set_default_executor(concurrent.futures.ThreadPoolExecutor(4))
            started = threading.Barrier(5)

            def job() -> None:
                started.wait(5)
                time.sleep(0.3)

            jobs = [loop_.run_in_executor(None, job) for _ in range(4)]
            started.wait(5)  # holds the loop until the four run (a short stall of its own)
            hold_the_loop(0.15)  # the stall
            await asyncio.gather(*jobs)
            assert monitor.settle(2.0)
            watch = monitor.pools
            assert watch is not None
            return [e for e in monitor.recent_stalls() if e.duration >= 0.14], list(
                watch.readings()
            )

    runner = uvloop.run if loop == "uvloop" else asyncio.run
    stalls, readings = runner(main())
    assert len(stalls) == 1
    assert stalls[0].pool_threads is not None
    assert 2.5 <= stalls[0].pool_threads <= 4.0, stalls[0].pool_threads
    assert stalls[0].to_dict()["pool_threads"] == stalls[0].pool_threads
    assert readings[0] == PoolReading(DEFAULT, 0, 0, 4)
