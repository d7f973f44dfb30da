"""``LoopMonitor`` on real event loops: every block is one stall of its
exact length, naming its cause and line; a GC pause is ``gc``; threads hogging the GIL
starve the loop.

See ``tests/monitor/support.py`` for the tolerances and why a loaded host relaxes some checks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

from stallwatch import BACKGROUND, LoopMonitor, StallEvent
from tests import blockers
from tests.blockers import Block, Kind
from tests.monitor.support import (
    LOOPS,
    PROBE,
    QUIET,
    Prepare,
    assert_exact,
    assert_names_the_block,
    block_once,
    explain,
    run,
)

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
            return await block_once(monitor, blockers.collect_garbage, freeze_heap=False)

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
