"""What the monitor's specifications share: loops, tolerances, readings of events and
metrics (the fixtures that calibrate the blockers are in ``conftest.py``)."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop
from prometheus_client import CollectorRegistry

from stallwatch import LoopMonitor, StallEvent
from tests.blockers import SAMPLED, Block, Kind

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
    monitor: LoopMonitor, block: Callable[[], Block], *, freeze_heap: bool = True
) -> tuple[Block, list[StallEvent]]:
    """Block the loop once; return the block and every stall recorded that overlaps it.

    With ``freeze_heap`` the test process's heap is out of the collector's view until the
    stall is recorded (``gc.freeze``): a full collection that the watchdog's allocations set
    off in the block, or right after it in the same stretch, would otherwise walk the whole
    heap (about 100 ms on CI) and lengthen the stall by that much, rightly called ``gc``.
    Collections still run, over what is new. The GC cases measure exactly such a walk, and
    turn it off.
    """
    # A few beats first, so the block starts from a steady, idle loop.
    await asyncio.sleep(0.05)
    known = monitor.recent_stalls()
    last = known[-1] if known else None
    if freeze_heap:
        gc.freeze()
    try:
        done = block()

        def new() -> list[StallEvent]:
            return newer_than(monitor.recent_stalls(), last)

        await wait_until(
            lambda: any(covers(e, done) for e in new()), 5.0, f"the stall of a {done.kind} block"
        )
        await asyncio.sleep(QUIET)
    finally:
        if freeze_heap:
            gc.unfreeze()
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


Prepare = Callable[[Kind, float], Callable[[], Block]]
