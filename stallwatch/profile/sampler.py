"""``ProfileSampler``: when the watchdog samples the busy loop for the profile, and where each
sample is charged.

The watchdog wakes at fixed moments ``period`` apart (a grid, so that the moments fall
anywhere in the loop's work with equal chance), and at each one that finds the loop busy it
reads the loop thread's stack. A sample is then charged to the request whose step was
running (a task it started counts as the request, as attribution does) or to
``<background>``, and filed under its innermost line of application code (``stacks.locate``).
An idle loop takes no samples; the watchdog's wake-up costs a few microseconds.

A request's name can still be unknown when its step is sampled (it is fixed on the loop
thread, usually when the request ends): such samples wait in ``pending`` until it is. If a
request lives on unnamed for ``NAME_AFTER`` seconds (a websocket, a long stream), the loop
thread is asked to name it on its next flush (``name_pending``), since route resolvers run
on the loop thread only.

Threads: everything but ``name_pending`` runs on the watchdog thread.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

from ..events import BACKGROUND, Frame
from ..routes import UNMATCHED
from .aggregate import LoopProfile
from .stacks import NO_STACK, Location, locate

RawStack = tuple[tuple[str, int, str], ...]
"""(filename, lineno, function) per frame, outermost first (``stall.sampling.RawStack``)."""

PENDING = 4096
"""Samples that wait for their request's name at most; past that the oldest is charged to
``<unmatched>`` (only a flood of requests that live long unnamed gets there)."""
LOCATED = 128
"""Stacks whose location is remembered: a busy loop shows the same few again and again, and
filing one anew (its frames interned, its callback found) costs tens of microseconds of
the watchdog's time while it holds the GIL. About 0.5 MB when full; past it, it starts over."""
LATENESS_KEPT = 64
"""Idle wake-ups whose lateness the OS latency estimate is the median of."""
NAME_AFTER = 1.0
"""Seconds a sample waits for its request to be named before the loop thread is asked to."""


class Payer(Protocol):
    """What the profile reads of a request (``request.spans.RequestSpan`` is one)."""

    @property
    def route(self) -> str | None:
        """The request's name once fixed, else None (read from the watchdog thread)."""

    def route_label(self) -> str:
        """Fix the name now (loop thread only)."""


@dataclass(frozen=True, slots=True)
class _Pending:
    at: float
    payer: Payer
    location: Location
    stack: tuple[Frame, ...] | None


class ProfileSampler:
    """Schedules the profile's samples and files them in ``profile`` (watchdog thread)."""

    def __init__(
        self,
        profile: LoopProfile,
        *,
        frames: Callable[[RawStack], tuple[Frame, ...]],
        top_frame: Callable[[Sequence[Frame]], Frame | None],
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        self.profile = profile
        self.period = profile.period
        self._frames = frames
        self._top_frame = top_frame
        self._clock = clock
        self.due = clock() + self.period
        """The next moment to look at the loop (perf_counter)."""
        self._pending: list[_Pending] = []
        self._located: dict[RawStack, tuple[Location, tuple[Frame, ...]]] = {}
        self._to_name: dict[int, Payer] = {}
        self.taken = 0
        """Samples filed so far (with a stack or without)."""
        self._idle_lateness: deque[float] = deque(maxlen=LATENESS_KEPT)
        self.latency = 0.0
        """How late the watchdog typically wakes when nothing holds the GIL (the median of
        the last wake-ups that found the loop polling): the OS's share of any lateness."""

    # -- the schedule ------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """The moment ``due`` has been dealt with: the next one is the first grid point after
        ``now`` (moments missed while the watchdog was held off are not made up)."""
        missed = max(0, math.floor((now - self.due) / self.period))
        self.due += (missed + 1) * self.period

    def woke_idle(self, late: float) -> None:
        """A moment found the loop polling, so the GIL was free: ``late`` seconds after the
        moment is how late the OS alone woke the watchdog."""
        kept = self._idle_lateness
        kept.append(late)
        if len(kept) % 8 == 0 or len(kept) < 8:
            self.latency = sorted(kept)[len(kept) // 2]

    def moment(self, due: float) -> float:
        """When a wake-up due at ``due`` really looked at the loop, but for waiting on the
        GIL: the grid shifted by the OS's lateness is as fair a set of moments as the grid."""
        return due + self.latency

    # -- filing ------------------------------------------------------------------------------

    def add(self, at: float, stack: RawStack | None, payer: Payer | None) -> None:
        """One sample: the stack read at ``at`` (None: the loop was busy at the moment but no
        stack could be read in time), charged to ``payer`` (None: ``<background>``)."""
        if stack is None:
            location: Location = NO_STACK
            kept: tuple[Frame, ...] | None = None
        else:
            found = self._located.get(stack)
            if found is None:
                found = locate(self._frames(stack), self._top_frame)
                if len(self._located) >= LOCATED:
                    self._located.clear()
                self._located[stack] = found
            location, kept = found
        self.taken += 1
        if payer is None:
            self.profile.add(BACKGROUND, location, kept)
            return
        route = payer.route
        if route is not None:
            self.profile.add(route, location, kept)
            return
        if len(self._pending) >= PENDING:
            oldest = self._pending.pop(0)
            self.profile.add(oldest.payer.route or UNMATCHED, oldest.location, oldest.stack)
        self._pending.append(_Pending(at, payer, location, kept))

    def settle(self, now: float) -> None:
        """Charge the waiting samples whose request has a name now; ask for the names of
        those that waited longer than ``NAME_AFTER``."""
        if not self._pending:
            return
        waiting: list[_Pending] = []
        for item in self._pending:
            route = item.payer.route
            if route is not None:
                self.profile.add(route, item.location, item.stack)
            else:
                if now - item.at >= NAME_AFTER:
                    self._to_name[id(item.payer)] = item.payer
                waiting.append(item)
        self._pending = waiting

    @property
    def waiting(self) -> int:
        """Samples waiting for their request's name."""
        return len(self._pending)

    # -- loop thread ---------------------------------------------------------------------------

    def name_pending(self) -> None:
        """Fix the names of the requests whose samples waited too long (loop thread, from the
        monitor's flush)."""
        if not self._to_name:
            return
        payers = list(self._to_name.values())
        self._to_name.clear()  # one asked for meanwhile is asked for again at the next settle
        for payer in payers:
            payer.route_label()
