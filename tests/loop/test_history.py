"""``LoopHistory`` holds a fixed ring of buckets: once its clock has run past the window,
more time and more traffic add nothing (the bound stated in docs/how-it-works.md)."""

from __future__ import annotations

import tracemalloc

from stallwatch.loop.history import LoopHistory

ROUTES = [f"/route/{i}" for i in range(24)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(history: LoopHistory, clock: Clock, seconds: int) -> None:
    """A busy minute-by-minute life: 100 beats a second, every route busy and frozen by
    every other, as the middleware's flush reports them ten times a second."""
    for _ in range(seconds):
        for tick in range(100):
            clock.now += 0.01
            history.beat(0.001 * (tick % 7))
            if tick % 10 == 0:
                for i, route in enumerate(ROUTES):
                    history.busy(route, 0.001)
                    history.frozen(route, ROUTES[(i + 1) % len(ROUTES)], 0.0005)


def test_memory_stays_flat_once_the_clock_has_run_past_the_window() -> None:
    clock = Clock()
    tracemalloc.start()
    try:
        history = LoopHistory(span=60.0, bucket=1.0, clock=clock, wall=clock)
        run(history, clock, 70)  # past the window: every slot has been filled once
        history.snapshot(300.0)
        full = tracemalloc.get_traced_memory()[0]
        run(history, clock, 70)  # another whole window, and more
        history.snapshot(300.0)
        later = tracemalloc.get_traced_memory()[0]
        run(history, clock, 130)  # two more
        history.snapshot(300.0)
        latest = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert full > 60 * 24 * 50  # it does hold a window: 60 buckets of 24 routes' figures
    # Flat: a window's buckets are reused, not added to (a few KB of dict resizes at most).
    assert later - full < 16 * 1024
    assert latest - full < 16 * 1024


def test_a_snapshot_covers_the_window_only() -> None:
    clock = Clock()
    history = LoopHistory(span=60.0, bucket=1.0, clock=clock, wall=clock)
    run(history, clock, 200)
    snapshot = history.snapshot(300.0)
    assert snapshot["window"] <= 60.0 + 1e-9
    assert snapshot["covered"] <= 60.0 + 1e-9
