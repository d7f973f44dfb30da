"""``LoopMonitor`` on real event loops: what it must see, how exactly, and how it behaves.

Every timing test blocks a real loop (the standard one and uvloop) from inside a coroutine,
measures the block itself around the one blocking call (``tests/blockers.py``), lets the loop
come back, then polls ``recent_stalls()`` until the watchdog has recorded the event. The issue's
tolerance for a stall's duration is max(2 ms, 5 %) of that measured block, on both loops.

A shared machine can keep the loop thread off a CPU for tens of milliseconds. The monitor
then rightly reports what the host did (starvation, a longer stall); the tests recognise it
from the event's own evidence (the loop thread ran for less than half the stall) and only
then relax the checks that the host, not the code, decided: see ``held_back_by_the_host``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from prometheus_client import REGISTRY, CollectorRegistry

from stallwatch import BACKGROUND, LoopMonitor, StallEvent, get_monitor
from stallwatch.stall.sampling import StackSampler
from tests import blockers
from tests.blockers import SAMPLED, Block, Kind, NativeSum, SlowQuery

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")
PROBE = {"asyncio": "poll", "uvloop": "uv-prepare"}
"""The most exact probe each loop allows; anything else means the exact timing was lost."""

LAG = "stallwatch_event_loop_lag_seconds"
STALLS = "stallwatch_event_loop_stalls_total"
STALL_SECONDS = "stallwatch_event_loop_stall_seconds"
IN_PROGRESS = "stallwatch_event_loop_stall_in_progress_seconds"
INTERNAL_ERRORS = "stallwatch_internal_errors_total"

EPS = 1e-6
"""Seconds below which two clock readings or lag values are the same, give or take rounding."""

HOST_SLACK = 0.025
"""How much longer than the call a host that keeps the loop thread off a CPU may make a stall:
about one scheduler period of Linux CFS on a busy machine."""

QUIET = 0.1
"""How long to keep watching after a stall was recorded, to see that no second one follows."""


# -- helpers ---------------------------------------------------------------------------------------


def run(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a fresh loop of the given kind, as a service would."""
    if loop == "uvloop":
        return uvloop.run(main)
    return asyncio.run(main)


def tolerance(seconds: float) -> float:
    """The issue's bound on a stall's duration error: max(2 ms, 5 %)."""
    return max(0.002, 0.05 * seconds)


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("stallwatch-watchdog")]


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` on the loop (which stays responsive) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def newer_than(events: list[StallEvent], last: StallEvent | None) -> list[StallEvent]:
    """The events recorded after ``last`` (all of them if it has left the ring)."""
    for index in range(len(events) - 1, -1, -1):
        if events[index] is last:
            return events[index + 1 :]
    return events


def covers(event: StallEvent, block: Block) -> bool:
    """Whether the stall overlaps the block (both on the wall clock)."""
    return (
        event.started_at < block.ended_at
        and event.started_at + event.duration > block.ended_at - block.seconds
    )


async def block_once(
    monitor: LoopMonitor, block: Callable[[], Block]
) -> tuple[Block, list[StallEvent]]:
    """Block the loop once; return the block and every stall recorded that overlaps it."""
    # A few beats first, so the block starts from a steady, idle loop.
    await asyncio.sleep(0.05)
    known = monitor.recent_stalls()
    last = known[-1] if known else None
    done = block()

    def new() -> list[StallEvent]:
        return newer_than(monitor.recent_stalls(), last)

    await wait_until(
        lambda: any(covers(e, done) for e in new()), 5.0, f"the stall of a {done.kind} block"
    )
    await asyncio.sleep(QUIET)
    others = [e for e in new() if not covers(e, done)]
    assert caused_on_the_loop(others) == [], "stalls that neither the block nor the host made"
    return done, [e for e in new() if covers(e, done)]


def same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def explain(event: StallEvent, block: Block) -> str:
    return f"block {block.kind} of {block.seconds * 1e3:.3f} ms; event {event.to_dict()}"


def assert_exact(event: StallEvent, block: Block) -> None:
    """Within the issue's tolerance of the measured block.

    Except when the host held the loop thread back (``held_back_by_the_host``): then it also
    lost the CPU just before or after the call, still inside the stall, and the loop was
    really unavailable for longer than the call lasted, by up to a scheduler period. The
    stall must still cover the call.
    """
    error = event.duration - block.seconds
    allowed = tolerance(block.seconds)
    low, high = -allowed, allowed
    if held_back_by_the_host(event, block):
        high = max(allowed, HOST_SLACK)
    assert low <= error <= high, f"duration off by {error * 1e3:+.3f} ms: {explain(event, block)}"


CPU_BOUND: frozenset[Kind] = frozenset({"sqlite", "cpu", "native"})


def held_back_by_the_host(event: StallEvent, block: Block) -> bool:
    """A CPU-bound block during which the loop thread ran for less than half the stall.

    Then a loaded host, not the block, made most of the stall: the issue counts a CPU the
    host did not give as starvation, and the watchdog, held back too, may have sampled only
    the moments around the block. Such a run still shows detection and duration, which must
    hold whatever the load, but not the cause or the line. On a quiet machine a CPU-bound
    block keeps its thread on a CPU and every check applies.
    """
    return (
        block.kind in CPU_BOUND and event.loop_cpu_ratio is not None and event.loop_cpu_ratio < 0.5
    )


def assert_names_the_block(event: StallEvent, block: Block, task: str) -> None:
    """Sampled kinds name the blocking line; a GIL-holding call says it could not sample."""
    if held_back_by_the_host(event, block):
        assert event.cause in {"blocking", "gil", "starvation"}, explain(event, block)
        return
    if block.kind in SAMPLED:
        assert event.cause == "blocking", explain(event, block)
        assert event.sampled is True, explain(event, block)
        assert_frame(event, block)
        assert event.task == task, explain(event, block)
    else:
        assert event.cause == "gil", explain(event, block)
        assert event.sampled is False, explain(event, block)
        assert event.top_frame is None, explain(event, block)
        assert event.stacks == (), explain(event, block)


def assert_frame(event: StallEvent, block: Block) -> None:
    top = event.top_frame
    assert top is not None, explain(event, block)
    assert same_file(top.filename, block.filename), explain(event, block)
    assert top.lineno == block.lineno, explain(event, block)


def caused_on_the_loop(events: list[StallEvent]) -> list[StallEvent]:
    """The stalls that code on the loop caused: those in which the loop thread mostly ran.

    On a loaded host the loop thread can be kept off a CPU (or off the GIL, by a watchdog
    that the host descheduled while it held it) for longer than the threshold. The loop
    really was unavailable then and the monitor rightly reports it, but no callback caused
    it; the loop thread's CPU share over the stall tells the two apart.
    """
    return [e for e in events if e.loop_cpu_ratio is None or e.loop_cpu_ratio >= 0.5]


Histogram = tuple[dict[float, float], float, float]


def histogram(
    registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None
) -> Histogram:
    """Cumulative bucket counts by upper bound, the count and the sum of one histogram."""
    labels = labels or {}
    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            rest = {k: v for k, v in sample.labels.items() if k != "le"}
            if rest != labels:
                continue
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == f"{name}_count":
                count = sample.value
            elif sample.name == f"{name}_sum":
                total = sample.value
    return buckets, count, total


def quantile(buckets: dict[float, float], count: float, q: float) -> float:
    """The smallest bucket bound under which at least ``q`` of the observations fall."""
    for bound in sorted(buckets):
        if buckets[bound] >= q * count:
            return bound
    return math.inf


# -- the blockers, calibrated once -----------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_query(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowQuery]:
    query = SlowQuery(tmp_path_factory.mktemp("sqlite") / "slow.db")
    yield query
    query.close()


Prepare = Callable[[Kind, float], Callable[[], Block]]


@pytest.fixture(scope="module")
def prepare(slow_query: SlowQuery) -> Prepare:
    """A blocker of each kind for a target length; call it a loop step before the block."""
    native = NativeSum()

    def prepared(kind: Kind, seconds: float) -> Callable[[], Block]:
        if kind == "sleep":
            return lambda: blockers.sleep(seconds)
        if kind == "cpu":
            return lambda: blockers.spin(seconds)
        if kind == "sqlite":
            return slow_query.prepare(seconds)
        return native.prepare(seconds)

    return prepared


@pytest.fixture(autouse=True)
def no_watchdog_left_behind() -> Iterator[None]:
    """Every test must leave no watchdog thread running, whatever it did."""
    yield
    deadline = time.monotonic() + 2.0
    while watchdog_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watchdog_threads() == []


# -- 1. every kind of block, on both loops: one stall, exact duration, cause, line -----------------

CASES = [
    pytest.param(loop, kind, seconds, id=f"{loop}-{kind}-{seconds * 1e3:g}ms")
    for loop in LOOPS
    for kind in blockers.KINDS
    for seconds in (0.05, 0.2, 1.0)
] + [pytest.param("uvloop", "cpu", 2.5, id="uvloop-cpu-2500ms")]


@pytest.mark.parametrize(("loop", "kind", "seconds"), CASES)
def test_a_block_is_one_stall_of_its_exact_length_naming_its_cause_and_line(
    loop: str, kind: Kind, seconds: float, prepare: Prepare
) -> None:
    async def main() -> tuple[str, str, Block, list[StallEvent]]:
        task = asyncio.current_task()
        assert task is not None
        async with LoopMonitor(registry=CollectorRegistry()) as monitor:
            block, events = await block_once(monitor, prepare(kind, seconds))
            return monitor.probe, task.get_name(), block, events

    probe, task, block, events = run(loop, main())

    assert probe == PROBE[loop]
    assert len(events) == 1, [e.to_dict() for e in events]
    (event,) = events
    assert_exact(event, block)
    assert_names_the_block(event, block, task)
    assert event.culprit == BACKGROUND
    assert event.culprits == {BACKGROUND: pytest.approx(1.0)}


# -- 2. why: a GC pause, and a loop starved of the GIL by other threads ----------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_gc_pause_is_reported_as_gc_not_as_blocking_code(loop: str) -> None:
    # Live containers that a full collection must traverse.
    garbage: list[list[object]] = [[] for _ in range(3_000_000)]

    async def main() -> tuple[Block, list[StallEvent]]:
        async with LoopMonitor(registry=CollectorRegistry()) as monitor:
            return await block_once(monitor, blockers.collect_garbage)

    try:
        block, events = run(loop, main())
    finally:
        del garbage

    assert len(events) == 1, [e.to_dict() for e in events]
    (event,) = events
    assert event.cause == "gc", explain(event, block)
    assert event.gc_seconds >= 0.5 * event.duration, explain(event, block)
    assert_exact(event, block)


def _burn(stop: threading.Event) -> None:
    spins = 0
    while not stop.is_set():
        for _ in range(10_000):
            spins += 1


@pytest.mark.parametrize("loop", LOOPS)
def test_threads_hogging_the_gil_starve_the_loop_and_that_is_not_called_gil(loop: str) -> None:
    async def main() -> list[StallEvent]:
        async with LoopMonitor(registry=CollectorRegistry()) as monitor:
            await asyncio.sleep(0.05)
            stop = threading.Event()
            hogs = [threading.Thread(target=_burn, args=(stop,)) for _ in range(4)]
            for hog in hogs:
                hog.start()
            try:
                # The loop itself only runs short callbacks: 2 ms of work, then it polls.
                deadline = time.monotonic() + 4.0
                while time.monotonic() < deadline:
                    causes = Counter(e.cause for e in monitor.recent_stalls())
                    if causes["starvation"] and sum(causes.values()) >= 3:
                        break
                    blockers.spin(0.002)
                    await asyncio.sleep(0)
            finally:
                stop.set()
                for hog in hogs:
                    hog.join()
            await asyncio.sleep(QUIET)
            return monitor.recent_stalls()

    events = run(loop, main())

    causes = Counter(e.cause for e in events)
    assert causes["starvation"] >= 1, causes
    assert causes["gil"] == 0, [e.to_dict() for e in events if e.cause == "gil"]
    for event in events:
        if event.cause == "starvation":
            assert event.loop_cpu_ratio is not None
            assert event.loop_cpu_ratio < 0.5


# -- 3. no false alarms ----------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_an_idle_loop_reports_no_stall_and_almost_no_lag(loop: str) -> None:
    registry = CollectorRegistry()

    async def main() -> list[StallEvent]:
        async with LoopMonitor(registry=registry) as monitor:
            await asyncio.sleep(2.0)
            return monitor.recent_stalls()

    assert run(loop, main()) == []
    buckets, count, _ = histogram(registry, LAG)
    assert count >= 100, "the heartbeat must run about every 10 ms"
    # The interval itself is subtracted: an idle loop's lag is timer slack, not 10 ms.
    assert quantile(buckets, count, 0.5) <= 0.002, buckets
    assert quantile(buckets, count, 0.9) <= 0.005, buckets


@pytest.mark.parametrize("loop", LOOPS)
def test_a_busy_loop_of_short_callbacks_reports_no_stall(loop: str) -> None:
    async def main() -> tuple[int, list[StallEvent]]:
        loop_ = asyncio.get_running_loop()
        finished = asyncio.Event()
        ran = 0
        until = time.monotonic() + 2.0

        def step() -> None:
            nonlocal ran
            ran += 1
            blockers.spin(0.001)  # well under 5 ms
            if time.monotonic() < until:
                loop_.call_soon(step)  # the next one runs after the loop has polled
            else:
                finished.set()

        async with LoopMonitor(registry=CollectorRegistry()) as monitor:
            loop_.call_soon(step)
            await finished.wait()
            await asyncio.sleep(QUIET)
            return ran, monitor.recent_stalls()

    ran, stalls = run(loop, main())
    assert ran >= 500, "the loop must have been busy most of the time"
    # No stall is blamed on the callbacks. A loaded CI host once showed one 20 ms pause here
    # with the loop thread on a CPU and the GIL held, no frame sampled: a real pause in that
    # process (cause ``gil``, nothing named), not one the 1 ms callbacks made.
    assert [e for e in caused_on_the_loop(stalls) if e.cause == "blocking" or e.sampled] == []


# -- 4. the lag histogram --------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_lag_after_a_block_records_every_beat_the_block_missed(loop: str) -> None:
    """One late beat records its lateness L, then L - i, L - 2i, ... down to 0 (exclusive)."""
    registry = CollectorRegistry()
    interval = 0.010

    async def main() -> tuple[Block, Histogram, Histogram]:
        async with LoopMonitor(registry=registry, interval=interval):
            await asyncio.sleep(0.05)
            before = histogram(registry, LAG)
            block = blockers.sleep(0.15)
            # The overdue beat runs within an iteration or two; read right after it.
            await wait_until(lambda: histogram(registry, LAG)[1] > before[1], 2.0, "the late beat")
            after = histogram(registry, LAG)
            return block, before, after

    block, (b0, n0, s0), (b1, n1, s1) = run(loop, main())

    n = round(n1 - n0)
    total = s1 - s0
    # n values L, L - i, ..., L - (n - 1) i sum to n L - i n (n - 1) / 2: that gives L.
    late = (total + interval * n * (n - 1) / 2) / n
    assert block.seconds - interval - 0.003 <= late <= block.seconds + 0.003, (late, block)
    # Every missed beat, no more (the monitor ignores a remainder under a nanosecond).
    assert n == math.ceil((late - 1e-9) / interval), (n, late)
    series = [late - k * interval for k in range(n)]
    for bound, cumulative in b1.items():
        # A value on a bucket's bound (uvloop's clock counts whole milliseconds) may fall
        # either side of it by rounding; elsewhere the count is exact.
        fewest = sum(1 for value in series if value <= bound - EPS)
        most = sum(1 for value in series if value <= bound + EPS)
        assert fewest <= cumulative - b0[bound] <= most, (bound, series)


# -- 5. metrics ------------------------------------------------------------------------------------


def test_each_stall_is_counted_and_timed_by_culprit_and_cause(prepare: Prepare) -> None:
    registry = CollectorRegistry()

    async def main() -> tuple[str, list[tuple[Block, StallEvent]], list[StallEvent]]:
        task = asyncio.current_task()
        assert task is not None
        seen = []
        async with LoopMonitor(registry=registry) as monitor:
            blocks: list[tuple[Kind, float]] = [("sleep", 0.1), ("sleep", 0.3), ("native", 0.1)]
            for kind, seconds in blocks:
                block, events = await block_once(monitor, prepare(kind, seconds))
                seen += [(block, event) for event in events]
            return task.get_name(), seen, monitor.recent_stalls()

    task, seen, events = run("asyncio", main())

    assert len(seen) == 3
    for block, event in seen:
        assert_names_the_block(event, block, task)
    assert seen[0][1].cause == seen[1][1].cause == "blocking"
    # Every recorded stall, the blocks' and any a loaded host added, is in the metrics.
    for cause in {e.cause for e in events}:
        stalls = [e for e in events if e.cause == cause]
        labels = {"culprit": BACKGROUND, "cause": cause}
        assert registry.get_sample_value(STALLS, labels) == len(stalls)
        buckets, count, total = histogram(registry, STALL_SECONDS, labels)
        assert count == len(stalls)
        assert total == pytest.approx(sum(e.duration for e in stalls))
        for bound, cumulative in buckets.items():
            assert cumulative == sum(1 for e in stalls if e.duration <= bound), bound


def test_the_default_registry_is_used_when_none_is_given() -> None:
    labels = {"culprit": BACKGROUND, "cause": "blocking"}
    before = REGISTRY.get_sample_value(STALLS, labels) or 0.0

    async def main() -> tuple[list[StallEvent], list[StallEvent]]:
        async with LoopMonitor() as monitor:
            _, mine = await block_once(monitor, lambda: blockers.sleep(0.05))
            return mine, monitor.recent_stalls()

    mine, every = run("asyncio", main())
    assert len(mine) == 1
    assert mine[0].cause == "blocking"
    blocking = sum(1 for e in every if e.cause == "blocking")
    assert REGISTRY.get_sample_value(STALLS, labels) == before + blocking


@pytest.mark.parametrize("loop", LOOPS)
def test_the_in_progress_gauge_shows_a_stall_while_the_loop_is_still_blocked(loop: str) -> None:
    registry = CollectorRegistry()
    seen: list[float] = []

    def scrape(stop: threading.Event) -> None:
        """What a scrape served off the loop thread would read."""
        while not stop.is_set():
            seen.append(registry.get_sample_value(IN_PROGRESS) or 0.0)
            stop.wait(0.01)

    async def main() -> Block:
        async with LoopMonitor(registry=registry) as monitor:
            await asyncio.sleep(0.05)
            stop = threading.Event()
            scraper = threading.Thread(target=scrape, args=(stop,))
            scraper.start()
            try:
                block = blockers.sleep(0.5)
            finally:
                stop.set()
                scraper.join()
            await wait_until(
                lambda: registry.get_sample_value(IN_PROGRESS) == 0.0, 2.0, "the gauge to reset"
            )
            await wait_until(lambda: bool(monitor.recent_stalls()), 2.0, "the stall")
            return block

    block = run(loop, main())
    assert seen, "the scraper must have read the gauge during the block"
    assert 0.25 <= max(seen) <= block.seconds + 0.05, seen
    assert registry.get_sample_value(IN_PROGRESS) == 0.0


# -- 6. life cycle, history, logs, errors ----------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_async_with_starts_and_stops_the_monitor_of_the_running_loop(loop: str) -> None:
    async def main() -> LoopMonitor:
        assert get_monitor() is None
        async with LoopMonitor(registry=CollectorRegistry()) as monitor:
            was_running = monitor.running
            assert monitor.loop is asyncio.get_running_loop()
            assert get_monitor() is monitor
            assert get_monitor(asyncio.get_running_loop()) is monitor
            assert len(watchdog_threads()) == 1
        assert was_running
        assert not monitor.running
        assert get_monitor() is None
        assert watchdog_threads() == []
        return monitor

    run(loop, main())
    assert get_monitor() is None  # no running loop here at all


def test_a_second_start_on_the_same_loop_is_harmless_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stallwatch")
    registry = CollectorRegistry()

    async def main() -> None:
        async with LoopMonitor(registry=registry) as first:
            assert first.start() is False
            second = LoopMonitor(registry=registry)
            assert second.start() is False
            assert not second.running
            second.stop()  # stopping a monitor that never started changes nothing
            assert get_monitor() is first
            assert first.running
            assert len(watchdog_threads()) == 1

    run("asyncio", main())
    said = [r for r in caplog.records if r.name == "stallwatch" and "already" in r.getMessage()]
    assert len(said) == 2, [r.getMessage() for r in caplog.records]


def test_stop_joins_the_watchdog_and_can_be_called_twice() -> None:
    async def main() -> None:
        monitor = LoopMonitor(registry=CollectorRegistry())
        assert monitor.start() is True
        assert len(watchdog_threads()) == 1
        monitor.stop()
        assert watchdog_threads() == []  # joined, not merely told to stop
        monitor.stop()
        assert get_monitor() is None

    run("asyncio", main())


@pytest.mark.parametrize("loop", LOOPS)
def test_closing_the_loop_stops_the_watchdog(loop: str) -> None:
    event_loop = uvloop.new_event_loop() if loop == "uvloop" else asyncio.new_event_loop()
    monitor = LoopMonitor(registry=CollectorRegistry())

    async def start() -> bool:
        return monitor.start()

    try:
        assert event_loop.run_until_complete(start())
        assert len(watchdog_threads()) == 1
    finally:
        event_loop.close()
    deadline = time.monotonic() + 2.0
    while watchdog_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watchdog_threads() == []
    assert not monitor.running
    assert get_monitor(event_loop) is None


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stopped_loop_is_not_a_stalled_loop(loop: str) -> None:
    """Between two ``run_until_complete`` calls the loop is not running: nothing waits on it."""
    registry = CollectorRegistry()
    event_loop = uvloop.new_event_loop() if loop == "uvloop" else asyncio.new_event_loop()
    monitor = LoopMonitor(registry=registry)

    async def start() -> None:
        monitor.start()
        await asyncio.sleep(0.05)

    try:
        event_loop.run_until_complete(start())
        lag_before = histogram(registry, LAG)[1]
        time.sleep(0.3)  # plain code between two runs of the loop, not a stall
        assert registry.get_sample_value(IN_PROGRESS) == 0.0
        event_loop.run_until_complete(asyncio.sleep(0.2))
        buckets, count, _ = histogram(registry, LAG)
    finally:
        monitor.stop()
        event_loop.close()
    assert monitor.recent_stalls() == []
    assert count > lag_before
    assert count - buckets[0.1] == 0, "the stopped time must not show up as lag"


def test_recent_stalls_keeps_only_the_last_history_events_oldest_first() -> None:
    async def main() -> tuple[list[StallEvent], list[StallEvent], list[StallEvent]]:
        seen: list[StallEvent] = []
        mine: list[StallEvent] = []
        async with LoopMonitor(registry=CollectorRegistry(), history=3) as monitor:
            for seconds in (0.04, 0.05, 0.06, 0.07, 0.08):
                known = monitor.recent_stalls()
                _, events = await block_once(monitor, functools.partial(blockers.sleep, seconds))
                seen += newer_than(monitor.recent_stalls(), known[-1] if known else None)
                mine += events
            return seen, mine, monitor.recent_stalls()

    seen, mine, kept = run("asyncio", main())
    assert len(mine) == 5
    assert kept == seen[-3:]
    assert mine[-1] in kept
    assert mine[0] not in kept


def test_each_stall_logs_one_warning_naming_duration_culprit_and_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stallwatch")

    async def main() -> tuple[list[StallEvent], list[StallEvent]]:
        mine: list[StallEvent] = []
        async with LoopMonitor(registry=CollectorRegistry()) as monitor:
            for _ in range(3):
                _, events = await block_once(monitor, lambda: blockers.sleep(0.05))
                mine += events
            return mine, monitor.recent_stalls()

    mine, events = run("asyncio", main())
    warnings = [r for r in caplog.records if r.name == "stallwatch" and r.levelno >= 30]
    assert len(mine) == 3
    assert len(warnings) == len(events)
    for event, record in zip(events, warnings, strict=True):
        message = record.getMessage()
        assert record.levelno == logging.WARNING
        assert f"{event.duration * 1e3:.1f} ms" in message
        assert f"by {event.culprit} at {event.top_frame or '(no stack sampled)'}" in message
        if event in mine:
            assert (
                f"by {BACKGROUND} at {blockers.__file__}:{blockers.line_of('sleep')} in sleep"
                in message
            )


def test_a_stall_storm_is_rate_limited_and_the_suppressed_count_is_reported_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stallwatch")

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in list(caplog.records)
            if r.name == "stallwatch" and r.levelno == logging.WARNING
        ]

    async def main() -> tuple[int, list[str], list[StallEvent]]:
        # A burst of 2, then one record per 2 s: a storm of 5 stalls logs only the first 2.
        async with LoopMonitor(registry=CollectorRegistry(), log_burst=2, log_every=4.0) as m:
            started = time.monotonic()
            for _ in range(5):
                await block_once(m, lambda: blockers.sleep(0.03))
            storm = time.monotonic() - started
            in_storm = warnings()
            # Keep stalling, slowly, until the limiter lets one through again.
            stalls = 5
            deadline = time.monotonic() + 6.0
            while len(warnings()) == len(in_storm) and time.monotonic() < deadline:
                await block_once(m, lambda: blockers.sleep(0.03))
                stalls += 1
                await asyncio.sleep(0.2)
            assert storm < 2.0, "the storm took too long for the limiter to hold it back"
            return stalls, in_storm, m.recent_stalls()

    stalls, in_storm, recorded = run("asyncio", main())
    assert len(recorded) >= stalls, "rate limiting limits the log, never the events"
    assert len(in_storm) == 2
    logged = warnings()
    assert len(logged) == 3
    mentioned = re.search(r"\((\d+) earlier stalls not logged\)", logged[-1])
    assert mentioned is not None, logged[-1]
    # Every stall up to the one logged last was either logged or counted in that record.
    last = max(i for i, e in enumerate(recorded) if f"for {e.duration * 1e3:.1f} ms" in logged[-1])
    assert int(mentioned.group(1)) == last + 1 - 3


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("interval", 0),
        ("interval", 0.0001),
        ("interval", "10ms"),
        ("interval", True),
        ("stall_threshold", 0),
        ("stall_threshold", -1.0),
        ("floor", -0.001),
        ("floor", 0.5),  # above the stall threshold
        ("sample_interval", 0),
        ("history", 0),
        ("history", 2.5),
        ("log_burst", 0),
        ("log_every", 0),
        ("lag_buckets", ()),
        ("lag_buckets", (0.1, 0.01)),
    ],
)
def test_invalid_options_raise_value_error_naming_the_option(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        LoopMonitor(registry=CollectorRegistry(), **{option: value})  # type: ignore[arg-type]


def test_an_error_inside_the_watchdog_is_counted_logged_once_and_survived(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stallwatch")
    registry = CollectorRegistry()
    broken = threading.Event()
    broken.set()
    real_sample = StackSampler.sample

    def sample(self: StackSampler) -> Any:
        if broken.is_set():
            raise RuntimeError("injected sampler failure")
        return real_sample(self)

    monkeypatch.setattr(StackSampler, "sample", sample)

    async def main() -> tuple[list[StallEvent], Block, list[StallEvent]]:
        async with LoopMonitor(registry=registry) as monitor:
            _, while_broken = await block_once(monitor, lambda: blockers.sleep(0.2))
            broken.clear()
            block, after = await block_once(monitor, lambda: blockers.sleep(0.2))
            return while_broken, block, after

    while_broken, block, after = run("asyncio", main())

    errors = registry.get_sample_value(INTERNAL_ERRORS, {"component": "watchdog"})
    assert errors is not None
    assert errors >= 2, "every failure is counted"
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "stallwatch"]
    assert len(logged) == 1, "logged once, not once per failure"
    assert len(while_broken) == 1, "the stall is still detected while sampling fails"
    assert while_broken[0].sampled is False
    (event,) = after
    assert_exact(event, block)
    assert event.sampled is True
    assert event.top_frame is not None
    assert event.top_frame.lineno == block.lineno


def test_the_watchdog_never_hangs_interpreter_exit(tmp_path: Path) -> None:
    """A monitor left running on a loop nobody closed is stopped and joined at exit."""
    script = tmp_path / "left_running.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio
            from prometheus_client import CollectorRegistry
            from stallwatch import LoopMonitor

            async def start():
                LoopMonitor(registry=CollectorRegistry()).start()
                await asyncio.sleep(0.05)

            loop = asyncio.new_event_loop()
            loop.run_until_complete(start())
            print("started", flush=True)
            """
        )
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started"
    assert "Traceback" not in done.stderr, done.stderr
    assert time.monotonic() - started < 10.0
