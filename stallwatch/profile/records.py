"""The profile over a window as plain records, and how merged counts are ranked into them.

Apart from ``aggregate`` (which counts, under its lock, on the watchdog thread) because the
readers need only this: the views (``view``), the folded writer (``folded``), the report and
the pytest plugin read ``ProfileSnapshot`` and its ``RouteProfile`` and ``LineProfile``
records, frozen and owned by no one once made. ``route_profile`` turns one route's merged
counts into its record: pure, no lock, no clock, any thread (``LoopProfile.snapshot`` calls
it after it has let its lock go).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ..events import Frame, StackSample
from .stacks import OTHER_LINES, Location

STACKS_SHOWN = 3
"""Stacks a view shows per line: the most frequent ones."""


@dataclass(frozen=True, slots=True)
class LineProfile:
    """One line of a route (or the route's ``(other lines)`` row) over the window."""

    location: Location
    samples: int
    stacks: tuple[StackSample, ...]
    """The most frequent stacks (at most ``STACKS_SHOWN``), outermost frame first."""
    unstacked: int
    """Samples of this line whose stack is not among ``stacks``."""


@dataclass(frozen=True, slots=True)
class RouteProfile:
    """One route (or ``<background>``) over the window, its lines most sampled first."""

    route: str
    samples: int
    lines: tuple[LineProfile, ...]
    """At most the profile's ``lines``, then one ``(other lines)`` row if any were left."""


@dataclass(frozen=True, slots=True)
class ProfileSnapshot:
    """The profile over a window, as plain records: what the views and the folded writer read."""

    window: float
    """The seconds asked for, rounded up to whole buckets."""
    covered: float
    """The seconds the samples really cover: less than ``window`` just after start."""
    period: float
    """Seconds of loop time one sample stands for (1 / the sampling rate)."""
    samples: int
    routes: tuple[RouteProfile, ...]
    """Most sampled first."""
    now: float
    """Wall-clock time of the snapshot (``time.time()``)."""


class Counts(Protocol):
    """What the ranking reads of one (route, line)'s samples over the window."""

    @property
    def count(self) -> int:
        """Samples, with a stack or without."""

    @property
    def unstacked(self) -> int:
        """Samples whose stack was not kept."""

    @property
    def stacks(self) -> Mapping[tuple[Frame, ...], int] | None:
        """Kept stacks and their samples; None when none was kept."""


def route_profile(route: str, lines: Mapping[Location, Counts], shown: int) -> RouteProfile:
    """One route's record: its ``shown`` most sampled lines, then one ``(other lines)`` row
    for the rest and for the samples already folded there."""
    ranked = sorted(
        ((loc, counts) for loc, counts in lines.items() if loc != OTHER_LINES),
        key=lambda kv: (-kv[1].count, str(kv[0])),
    )
    kept = [_line(loc, counts) for loc, counts in ranked[:shown]]
    rest = [counts for _, counts in ranked[shown:]]
    other = lines.get(OTHER_LINES)
    if other is not None:
        rest.append(other)
    if rest:
        n = sum(counts.count for counts in rest)
        kept.append(LineProfile(OTHER_LINES, n, (), n))
    return RouteProfile(route, sum(line.samples for line in kept), tuple(kept))


def _line(location: Location, counts: Counts) -> LineProfile:
    ranked = sorted((counts.stacks or {}).items(), key=lambda kv: -kv[1])
    shown = tuple(StackSample(frames=stack, count=n) for stack, n in ranked[:STACKS_SHOWN])
    return LineProfile(
        location=location,
        samples=counts.count,
        stacks=shown,
        unstacked=counts.count - sum(s.count for s in shown),
    )
