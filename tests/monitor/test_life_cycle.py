"""``LoopMonitor`` on real event loops: start, stop, closing the loop,
history, logs, invalid options and the watchdog's own errors.

See ``tests/monitor/support.py`` for the tolerances and why a loaded host relaxes some checks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry

from stallwatch import BACKGROUND, LoopMonitor, StallEvent, get_monitor
from stallwatch.stall.sampling import StackSampler
from tests import blockers
from tests.blockers import Block
from tests.monitor.support import (
    IN_PROGRESS,
    INTERNAL_ERRORS,
    LAG,
    LOOPS,
    assert_exact,
    block_once,
    histogram,
    newer_than,
    run,
    watchdog_threads,
)

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


@pytest.mark.parametrize("loop", LOOPS)
def test_no_thread_of_stallwatch_outlives_the_loop_it_watched(loop: str) -> None:
    """A test that counts threads around ``asyncio.run`` (anyio's suite does) must count the
    same with stallwatch: closing the loop stops the monitor and joins its watchdog."""

    async def main() -> int:
        LoopMonitor(registry=CollectorRegistry()).start()
        await asyncio.sleep(0.05)
        return threading.active_count()

    before = threading.active_count()
    during = run(loop, main())
    assert during == before + 1  # the watchdog
    assert threading.active_count() == before  # at once, not at its next look
