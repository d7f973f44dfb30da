"""When things go wrong, in the app, the client, the registry or stallwatch itself, the app
keeps serving, nothing is left behind, and the counters still add up.

Most tests drive the Starlette app of ``tests/apps/proof_routes.py`` straight through ASGI on
a real loop, with the monitor started by lifespan as a server would start it: the subject
is what stallwatch does with a failure, not timing. The stall storm blocks a real loop
hundreds of times a second; the last test runs two real uvicorn workers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from stallwatch import StallwatchMiddleware, get_monitor
from stallwatch.stall.watchdog import Watchdog
from tests.apps import proof_routes
from tests.servers import uvicorn

DURATION = "stallwatch_http_request_duration_seconds"


def count(registry: CollectorRegistry, route: str, **labels: str) -> float:
    """Requests of ``route`` the request histogram holds (any method and status unless given)."""
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == DURATION
        for sample in family.samples
        if sample.name.endswith("_count")
        and sample.labels["route"] == route
        and all(sample.labels[k] == v for k, v in labels.items())
    )


def hold_the_loop(seconds: float) -> None:
    """A blocking call in async code: the loop does nothing else meanwhile."""
    time.sleep(seconds)


def in_flight(app: StallwatchMiddleware) -> int:
    monitor = app.monitor
    assert monitor is not None
    return len(monitor.timeline.in_flight)


def served(build: Callable[[], StallwatchMiddleware], run: Callable[[Any], Any], **kw: Any) -> Any:
    """Run ``run(app)`` on a fresh loop between lifespan startup and shutdown."""
    app = build()

    async def main() -> Any:
        shutdown = await proof_routes.lifespan(app)
        try:
            return await run(app)
        finally:
            await shutdown()

    return asyncio.run(main())


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def wrapped(registry: CollectorRegistry, **options: Any) -> Callable[[], StallwatchMiddleware]:
    return lambda: StallwatchMiddleware(proof_routes.build(), registry=registry, **options)


# -- the app fails, the client leaves, the server cancels ------------------------------------


def test_an_app_error_reaches_the_server_unchanged_and_is_counted_as_a_500(
    registry: CollectorRegistry,
) -> None:
    async def run(app: StallwatchMiddleware) -> list[proof_routes.Exchange]:
        results = [await proof_routes.call(app, "GET", "/boom") for _ in range(5)]
        results.append(await proof_routes.call(app, "GET", "/"))  # and it keeps serving
        assert in_flight(app) == 0
        app.flush()
        return results

    results = served(wrapped(registry), run)

    assert [type(r.error) for r in results[:5]] == [RuntimeError] * 5
    assert all(str(r.error) == "the app failed" for r in results[:5])
    assert results[5].status == 200
    assert count(registry, "/boom", status="500") == 5
    assert proof_routes.internal_errors(registry) == 0


def test_a_client_that_leaves_mid_stream_ends_the_request_and_it_is_still_counted(
    registry: CollectorRegistry,
) -> None:
    async def run(app: StallwatchMiddleware) -> list[proof_routes.Exchange]:
        left = [await proof_routes.call(app, "GET", "/stream/50", leave_after=2) for _ in range(4)]
        whole = await proof_routes.call(app, "GET", "/stream/3")
        await asyncio.sleep(0.05)
        assert in_flight(app) == 0
        app.flush()
        return [*left, whole]

    *left, whole = served(wrapped(registry), run)

    # The app sees the disconnect as it would bare: the send fails, the stream stops early.
    assert all(r.chunks < 50 for r in left), [r.chunks for r in left]
    assert whole.chunks == 3
    assert whole.error is None
    assert count(registry, "/stream/{chunks:int}") == 5
    assert proof_routes.internal_errors(registry) == 0


def test_a_request_cancelled_by_the_server_is_let_go_and_counted_once(
    registry: CollectorRegistry,
) -> None:
    async def run(app: StallwatchMiddleware) -> None:
        tasks = [
            asyncio.ensure_future(proof_routes.call(app, "GET", "/stream/100000"))
            for _ in range(10)
        ]
        await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        assert in_flight(app) == 0
        assert (await proof_routes.call(app, "GET", "/")).status == 200
        app.flush()

    served(wrapped(registry), run)

    assert count(registry, "/stream/{chunks:int}") == 10
    assert count(registry, "/") == 1
    assert proof_routes.internal_errors(registry) == 0


# -- the registry and stallwatch's own code ---------------------------------------------------


def test_a_registry_that_already_holds_a_stallwatch_metric_does_not_stop_the_app(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    Counter("stallwatch_event_loop_stalls", "registered by someone else", registry=registry)

    async def run(app: StallwatchMiddleware) -> list[proof_routes.Exchange]:
        return [await proof_routes.call(app, "GET", p) for p in ("/", "/boom", "/items/3")]

    with caplog.at_level(logging.WARNING, logger="stallwatch"):
        results = served(wrapped(registry), run)

    assert [r.status for r in results] == [200, 500, 200]
    assert isinstance(results[1].error, RuntimeError)
    # It says what is wrong, once, naming the metric it could not register.
    said = [r for r in caplog.records if "stallwatch_event_loop_stalls" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


def test_the_watchdog_failing_is_counted_logged_once_and_the_app_keeps_serving(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fails(self: Watchdog, *args: Any) -> Any:
        raise RuntimeError("watchdog bug")

    # While the loop is held (sampling) and once a stall ended (building the event).
    monkeypatch.setattr(Watchdog, "_sample", fails)
    monkeypatch.setattr(Watchdog, "_event", fails)

    async def run(app: StallwatchMiddleware) -> list[int | None]:
        statuses = []
        for _ in range(5):
            statuses.append((await proof_routes.call(app, "GET", "/")).status)
            hold_the_loop(0.06)  # hold the loop past the threshold: the watchdog has work
            await asyncio.sleep(0.05)
        monitor = get_monitor()
        assert monitor is not None
        assert monitor.running
        return statuses

    with caplog.at_level(logging.ERROR, logger="stallwatch"):
        statuses = served(wrapped(registry, stall_threshold=0.02), run)

    assert statuses == [200] * 5
    errors = registry.get_sample_value(
        "stallwatch_internal_errors_total", {"component": "watchdog"}
    )
    assert errors is not None
    assert errors >= 5
    logged = [r for r in caplog.records if "watchdog" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert count(registry, "/") == 5


def test_a_stall_storm_keeps_serving_and_every_stall_is_counted_once(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Hundreds of stalls a second: each is counted once, the log and history stay bounded."""
    requests = 400

    async def run(app: StallwatchMiddleware) -> tuple[float, list[proof_routes.Exchange]]:
        started = time.monotonic()
        results: list[proof_routes.Exchange] = []
        for _ in range(requests // 10):
            batch = [proof_routes.call(app, "GET", "/items/1") for _ in range(10)]
            results += await asyncio.gather(*batch)
            hold_the_loop(0.004)  # over the threshold: one stall per batch, at the least
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.3)  # the watchdog reports each stall just after it ends
        app.flush()
        monitor = get_monitor()
        assert monitor is not None
        assert len(monitor.recent_stalls()) <= 100
        assert in_flight(app) == 0
        return elapsed, results

    with caplog.at_level(logging.WARNING, logger="stallwatch"):
        elapsed, results = served(
            wrapped(registry, stall_threshold=0.002, floor=0.001, log_every=10.0, log_burst=5), run
        )

    assert [r.status for r in results] == [200] * requests
    stalls = sum(
        s.value
        for f in registry.collect()
        if f.name == "stallwatch_event_loop_stalls"
        for s in f.samples
        if s.name.endswith("_total")
    )
    durations = sum(
        s.value
        for f in registry.collect()
        if f.name == "stallwatch_event_loop_stall_seconds"
        for s in f.samples
        if s.name.endswith("_count")
    )
    assert stalls >= requests // 10, stalls
    assert stalls / elapsed >= 100, (stalls, elapsed)  # it really was a storm
    assert durations == stalls
    assert registry.get_sample_value("stallwatch_event_loop_stall_in_progress_seconds") == 0
    logged = [r for r in caplog.records if "stalled" in r.getMessage()]
    assert len(logged) <= 5 + 1, len(logged)  # the burst, and one more token at most
    assert count(registry, "/items/{item_id:int}") == requests
    assert proof_routes.internal_errors(registry) == 0


# -- many workers ------------------------------------------------------------------------------


def test_many_workers_count_every_request_exactly_once_the_flush_interval_passed(
    tmp_path: Path,
) -> None:
    """Each worker hands its counts to the shared files at least every 0.1 s: a scrape served
    by one worker may be that far behind the others, and exact once it has passed."""
    sent = 200
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with uvicorn(
        "tests.apps.mp_app:app", args=["--workers", "2"], env=env, ready_path="/metrics"
    ) as base:
        pids: set[int] = set()
        lock = threading.Lock()

        def client(n: int) -> None:
            # A new connection per request, so both workers get some.
            for _ in range(n):
                pid = httpx.get(base + "/pid", timeout=10).json()["pid"]
                with lock:
                    pids.add(pid)

        threads = [threading.Thread(target=client, args=(sent // 4,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        time.sleep(0.25)  # the flush interval, with room
        scrapes = [pid_count(httpx.get(base + "/metrics", timeout=10).text) for _ in range(6)]

    assert len(pids) == 2, pids
    assert scrapes == [float(sent)] * 6


def pid_count(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == DURATION
        for sample in family.samples
        if sample.name.endswith("_count") and sample.labels["route"] == "/pid"
    )
