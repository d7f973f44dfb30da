"""The judgements behind a stall event, as pure functions: why the loop did not poll, and who
held it.

The watchdog gathers the evidence (CPU clocks, GC pauses, whether it could take a stack);
these functions only weigh it, so every rule can be read here and tested table by table
without threads or real time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .events import BACKGROUND, Cause


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the watchdog knows about one stall once it has ended."""

    duration: float
    gc_seconds: float
    """Garbage collection that overlapped the stall."""
    loop_cpu: float | None
    """Share of the stall the loop thread ran on a CPU; None where the OS does not tell."""
    others_cpu: float
    """CPUs used by the process's other threads, per second of the stall."""
    queued: float | None
    """Share of the stall the loop thread waited in the run queue (Linux schedstat)."""
    on_lock: float | None
    """Share of samples that found the loop thread asleep in futex; None when unknown."""
    stacks: bool
    """The watchdog took at least one stack while the loop was held."""
    held_off: bool
    """A wake-up of the watchdog during the stall came late: something kept the GIL."""
    gil: bool = True
    """The interpreter has a GIL (False on free-threaded builds, where ``gil`` cannot be)."""


GC_SHARE = 0.5
"""A stall is ``gc`` when collections cover at least this share of it."""
LOOP_CPU_LOW = 0.5
"""Below this share of the stall on a CPU, the loop thread did not hold the loop: it waited."""
OTHERS_BUSY = 0.5
"""Other threads using at least this many CPUs (per second of the stall) point at the GIL."""
ON_LOCK = 0.5
"""Share of samples in which the loop thread slept in futex (the GIL) to call it contention."""
QUEUED = 0.5
"""Share of the stall the loop thread waited for a CPU in the run queue to call it starved."""


def decide_cause(evidence: Evidence) -> Cause:
    """``gc``, ``starvation``, ``gil`` or ``blocking``, in that order of precedence."""
    if evidence.gc_seconds >= GC_SHARE * evidence.duration:
        return "gc"
    cpu = evidence.loop_cpu
    if cpu is not None and cpu < LOOP_CPU_LOW:
        contended = evidence.others_cpu >= OTHERS_BUSY and (
            evidence.on_lock is None or evidence.on_lock >= ON_LOCK
        )
        queued = evidence.queued is not None and evidence.queued >= QUEUED
        # Held off, yet the loop thread barely ran: it did not keep the GIL in a native
        # call, it waited (for the GIL or a CPU) as the watchdog did.
        waited = not evidence.stacks and evidence.held_off
        if contended or queued or waited:
            return "starvation"
    if evidence.gil and not evidence.stacks and evidence.held_off:
        return "gil"
    return "blocking"


HELD_OFF = 0.5
"""Kept off the GIL for this share of a stall, the watchdog's samples came after the block."""


def samples_after_the_block(held_for: float, duration: float) -> bool:
    """Whether the watchdog was kept off the GIL for most of the stall, so that any stack it
    took shows what ran after the native call returned, not the call: drop such stacks."""
    return held_for >= HELD_OFF * duration


def culprits(holders: Mapping[str, float], duration: float) -> tuple[str, dict[str, float]]:
    """The dominant holder and every holder's share of the stall, largest first."""
    ranked = sorted(holders.items(), key=lambda kv: kv[1], reverse=True)
    total = duration if duration > 0 else 1.0
    shares = {name: seconds / total for name, seconds in ranked}
    return (ranked[0][0] if ranked else BACKGROUND), shares


VICTIM_HELD_MAX = 0.5
"""A request that held at least this share of a stall was (one of) its culprits, not a victim."""


@dataclass(frozen=True, slots=True)
class Waiter:
    """A request alive during a stall: its route, how long it held the loop in the stall, and
    how long it was alive in it."""

    route: str
    held: float
    alive: float


def victims(
    waiters: Iterable[Waiter], duration: float, floor: float
) -> tuple[dict[str, int], dict[str, float]]:
    """The routes a stall froze: how many requests of each, and for how many seconds in all.

    A request that held the loop for most of the stall is its culprit, never its own victim;
    every other request alive in it waited for whatever the others held while it was alive,
    whether it ran a step in the stall (behind the others in the ready queue) or not.
    """
    counts: dict[str, int] = {}
    frozen: dict[str, float] = {}
    for waiter in waiters:
        waited = waiter.alive - waiter.held
        if waiter.held >= VICTIM_HELD_MAX * duration or waited < floor:
            continue
        counts[waiter.route] = counts.get(waiter.route, 0) + 1
        frozen[waiter.route] = frozen.get(waiter.route, 0.0) + waited
    return counts, frozen
