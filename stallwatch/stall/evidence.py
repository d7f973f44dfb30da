"""What a stall was, from what the watchdog gathered while it lasted: the samples, the
wake-ups it was held off, the CPU counters at the window's start. Pure functions of those
records, so that the watchdog thread only gathers and the weighing can be read, and tested,
on its own (the thresholds themselves are in ``decisions.py``)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter

from ..decisions import Evidence, culprits, decide_cause, samples_after_the_block
from ..events import Cause, Frame, StallEvent
from ..loop.stretch import Stretch
from .sampling import RawStack, aggregate

GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
"""False on a free-threaded build, where no native call can keep the others off a GIL."""


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    stack: RawStack | None
    task: str | None
    started_by: Frame | None
    on_lock: bool | None
    stretch: int = -1
    """The timeline's ``stretch_id`` when taken: -1 for stall samples, which their stall
    takes; a profile sample of a stretch that has ended without a stall is dropped."""


@dataclass(frozen=True, slots=True)
class Counters:
    """CPU counters at a moment the loop was not stalled: where the next window starts."""

    at: float
    thread_cpu: float | None
    process_cpu: float
    run_queue_wait: float | None
    pool_busy: float = 0.0


def weigh(
    stretch: Stretch,
    samples: Sequence[Sample],
    late: Sequence[tuple[float, float]],
    mark: Counters,
    wait_now: float | None,
    gc_seconds: float,
) -> tuple[list[RawStack], Cause, float | None]:
    """The stacks to keep, the cause, and the loop thread's share of a CPU over the window."""
    # A wake-up due just before the stretch began is held off by the same GIL holder:
    # what counts is that the watchdog was kept from running while the loop was held.
    held_off = any(due <= stretch.end and woke >= stretch.start for due, woke in late)
    held_for = sum(max(0.0, min(woke, stretch.end) - max(due, stretch.start)) for due, woke in late)
    stacks = [s.stack for s in samples if s.stack is not None]
    if samples_after_the_block(held_for, stretch.duration):
        stacks = []
    window = max(stretch.end - mark.at, stretch.duration, 1e-9)
    cpu_ratio: float | None = None
    if mark.thread_cpu is not None:
        cpu_ratio = min(1.0, max(0.0, (stretch.thread_cpu - mark.thread_cpu) / window))
    locks = [s.on_lock for s in samples if s.on_lock is not None]
    cause = decide_cause(
        Evidence(
            duration=stretch.duration,
            gc_seconds=gc_seconds,
            loop_cpu=cpu_ratio,
            others_cpu=(stretch.process_cpu - mark.process_cpu) / window - (cpu_ratio or 0.0),
            queued=(
                (wait_now - mark.run_queue_wait) / window
                if wait_now is not None and mark.run_queue_wait is not None
                else None
            ),
            on_lock=sum(locks) / len(locks) if locks else None,
            stacks=bool(stacks),
            held_off=held_off,
            gil=GIL,
        )
    )
    return stacks, cause, cpu_ratio


def stall_event(
    stretch: Stretch,
    samples: Sequence[Sample],
    stacks: list[RawStack],
    *,
    cause: Cause,
    cpu_ratio: float | None,
    gc_seconds: float,
    pool_threads: float | None,
    top_frame: Callable[[tuple[Frame, ...]], Frame | None],
) -> StallEvent:
    """The event, from the stretch the loop handed over and what was weighed of it."""
    culprit, shares = culprits(stretch.holders, stretch.duration)
    aggregated = aggregate(stacks)
    top = top_frame(aggregated[0].frames) if aggregated else None
    tasks = Counter(s.task for s in samples if s.task)
    started = Counter(s.started_by for s in samples if s.started_by is not None)
    return StallEvent(
        started_at=time.time() - (perf_counter() - stretch.start),
        duration=stretch.duration,
        cause=cause,
        culprit=culprit,
        culprits=shares,
        victims=dict(stretch.victims),
        frozen=dict(stretch.frozen),
        top_frame=top,
        stacks=aggregated,
        sampled=bool(stacks),
        task=tasks.most_common(1)[0][0] if tasks else None,
        gc_seconds=gc_seconds,
        loop_cpu_ratio=cpu_ratio,
        allowed=stretch.allowed,
        started_by=started.most_common(1)[0][0] if started else None,
        pool_threads=None if pool_threads is None else round(pool_threads, 1),
        trace=stretch.trace,
    )
