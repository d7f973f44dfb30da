"""``LoopMonitor`` on real event loops: each stall is counted and timed
by culprit and cause; the in-progress gauge.

See ``tests/monitor/support.py`` for the tolerances and why a loaded host relaxes some checks.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from stallwatch import BACKGROUND, LoopMonitor, StallEvent
from tests import blockers
from tests.blockers import Block, Kind
from tests.monitor.support import (
    IN_PROGRESS,
    LOOPS,
    STALL_SECONDS,
    STALLS,
    Prepare,
    assert_names_the_block,
    block_once,
    histogram,
    run,
    wait_until,
)

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
