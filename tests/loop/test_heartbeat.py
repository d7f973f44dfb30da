"""``Heartbeat``: lag measured every interval while the loop works, quiet while it has nothing
to do, and nothing lost either way: the beats it skips are counted, a stall while quiet is
recorded as the skipped beats would have seen it, and the watchdog, parked while the quiet
loop polls, is woken by the loop in time to read the stall's stack. Real loops."""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import CollectorRegistry

from stallwatch import LoopMonitor
from stallwatch.loop.heartbeat import QUIET_AFTER, QUIET_FACTOR
from tests import blockers
from tests.monitor.support import LAG, LOOPS, histogram, run, wait_until

INTERVAL = 0.010


def quiet(monitor: LoopMonitor) -> bool:
    attached = monitor._attached
    return attached is not None and attached.heartbeat.quiet


@pytest.mark.parametrize("loop", LOOPS)
def test_an_idle_loop_goes_quiet_and_its_skipped_beats_still_count(loop: str) -> None:
    registry = CollectorRegistry()

    async def main() -> tuple[bool, bool, int, float, float, float]:
        async with LoopMonitor(registry=registry, interval=INTERVAL) as monitor:
            await asyncio.sleep(QUIET_AFTER / 2)
            early = quiet(monitor)
            await wait_until(lambda: quiet(monitor), QUIET_AFTER * 10, "the heartbeat to go quiet")
            timeline = monitor.timeline
            long0 = timeline.seq
            _, count0, _ = histogram(registry, LAG)
            began = asyncio.get_running_loop().time()
            await asyncio.sleep(1.0)
            _, count1, total = histogram(registry, LAG)
            elapsed = asyncio.get_running_loop().time() - began
            longs = timeline.seq - long0
            return early, quiet(monitor), longs, count1 - count0, elapsed, total

    early, still, longs, counted, elapsed, total = run(loop, main())
    assert not early  # busy with starting: not quiet before QUIET_AFTER
    # Quiet for the idle second, unless a stretch past the floor brought it back, as it should:
    # on a machine whose cores are taken (a loaded CI run), the loop thread waits for one in
    # the middle of a beat, and that beat's stretch is long. 7 runs of 11 with two busy loops
    # on the two cores; none on a quiet machine.
    assert still or longs > 0, (still, longs)
    # Quiet beats stand for the beats they skip: about one observation per interval still.
    expected = elapsed / INTERVAL
    assert expected - 2 * QUIET_FACTOR <= counted <= expected + 2 * QUIET_FACTOR
    assert total / max(counted, 1) < 0.005  # an idle loop's lag is timer slack


@pytest.mark.parametrize("loop", LOOPS)
def test_a_block_while_quiet_is_a_stall_with_its_stack_and_its_missed_beats(loop: str) -> None:
    registry = CollectorRegistry()

    async def main() -> tuple[blockers.Block, list[object], float, float, bool]:
        async with LoopMonitor(registry=registry, interval=INTERVAL) as monitor:
            await wait_until(lambda: quiet(monitor), QUIET_AFTER * 10, "the heartbeat to go quiet")
            buckets0, count0, _ = histogram(registry, LAG)
            block = blockers.sleep(0.15)
            await wait_until(lambda: bool(monitor.recent_stalls()), 2.0, "the stall")
            await asyncio.sleep(0.05)
            buckets1, count1, _ = histogram(registry, LAG)
            over_100ms = count1 - count0 - (buckets1[0.1] - buckets0[0.1])
            return block, monitor.recent_stalls(), count1 - count0, over_100ms, quiet(monitor)

    block, stalls, counted, over_100ms, after = run(loop, main())
    (stall,) = stalls
    assert stall.sampled, "the parked watchdog was woken and read the stack during the stall"
    assert stall.top_frame is not None
    assert stall.top_frame.lineno == block.lineno
    # The beats due in the 150 ms: about 15, and the ones due in its first 50 ms waited
    # over 100 ms (a beat due every interval from half an interval into the block). The
    # block is as long as the machine made it (a loaded one oversleeps by tens of ms): the
    # beats over 100 ms are counted from the stall's measured length.
    assert counted >= 12
    assert stall.duration >= 0.15
    expected = math.ceil((stall.duration - INTERVAL / 2 - 0.1) / INTERVAL)
    assert expected - 2 <= over_100ms <= expected + 1
    assert not after  # a stall is work: the heartbeat beats every interval again
