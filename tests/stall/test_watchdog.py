"""The watchdog turns every ended stall into an event, ``settle`` says when it has, and a
wake-up the loop held off is evidence even when the stall was handed over first."""

from __future__ import annotations

import asyncio
import threading
import time

from prometheus_client import CollectorRegistry

from stallwatch import BACKGROUND, LoopMonitor, StallEvent
from stallwatch.loop.stretch import Stretch
from stallwatch.stall.sampling import StackSampler
from stallwatch.stall.watchdog import Watchdog, WatchdogLinks


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


def test_a_wake_up_held_off_through_a_stall_counts_though_the_stall_was_handed_over_first() -> None:
    """A host that gives the watchdog no CPU while a native call keeps the GIL lets the loop
    finish the call and hand the stall over before the watchdog runs at all: its one late
    wake-up is still the proof that something kept the GIL, and the stall is ``gil``."""
    loop = asyncio.new_event_loop()
    events: list[StallEvent] = []
    try:
        links = WatchdogLinks(
            loop=loop,
            held_since=lambda: None,
            started_by=lambda: None,
            record=events.append,
            on_error=lambda: None,
            show_stall=lambda seconds: None,
            loop_closed=lambda: None,
        )
        watchdog = Watchdog(
            links,
            StackSampler(threading.get_ident()),
            threading.get_native_id(),
            threshold=0.05,
            sample_interval=0.005,
        )
        start = time.perf_counter()
        while time.perf_counter() - start < 0.2:  # the loop thread on a CPU, as in a native call
            pass
        end = time.perf_counter()
        due = start + 0.05  # the watchdog's wake-up, due inside the stall, comes after it
        watchdog.stall_ended(
            Stretch(
                start=start,
                end=end,
                duration=end - start,
                holders={BACKGROUND: end - start},
                victims={},
                frozen={},
                thread_cpu=time.thread_time(),
                process_cpu=time.process_time(),
            )
        )
        watchdog._tick(due)
    finally:
        loop.close()

    (event,) = events
    assert event.cause == "gil", event.to_dict()
    assert event.sampled is False
