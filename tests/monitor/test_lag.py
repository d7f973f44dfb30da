"""``LoopMonitor`` on real event loops: the lag histogram records every beat a block missed.

See ``tests/monitor/support.py`` for the tolerances and why a loaded host relaxes some checks.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import CollectorRegistry

from stallwatch import LoopMonitor
from tests import blockers
from tests.blockers import Block
from tests.monitor.support import EPS, LAG, LOOPS, Histogram, histogram, run, wait_until

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
