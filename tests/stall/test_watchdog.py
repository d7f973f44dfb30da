"""The watchdog hands every ended stall over as an event, and ``settle`` says when it has."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from stallwatch import LoopMonitor


def test_settle_returns_once_every_ended_stall_is_an_event() -> None:
    async def main() -> tuple[bool, int]:
        monitor = LoopMonitor(registry=CollectorRegistry(), stall_threshold=0.03)
        monitor.start()
        try:
            for _ in range(3):
                time.sleep(0.05)  # noqa: ASYNC251 - the stall under test
                await asyncio.sleep(0.001)
            settled = monitor.settle(5.0)
            return settled, len(monitor.recent_stalls())
        finally:
            monitor.stop()

    settled, stalls = asyncio.run(main())
    assert settled
    assert stalls == 3


def test_settle_on_a_monitor_never_started_has_nothing_to_wait_for() -> None:
    assert LoopMonitor(registry=CollectorRegistry()).settle(0.01)
