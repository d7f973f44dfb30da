"""Busy stretches of the event loop and who held the loop in each.

A *busy stretch* is the time between two polls of the event loop: while it lasts, finished I/O,
expired timers and new connections wait. The probe (``probes.py``) tells the timeline where
stretches begin and end; request spans (``spans.py``) tell it which request ran in each. From
the two the timeline knows, for every stretch longer than the floor, how many seconds each
route held the loop; it keeps running totals of those seconds so that a finishing request can
learn what froze it during its life from two snapshots, without a loop over stretches.

Everything here runs on the loop thread only, so nothing is locked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter, process_time, thread_time
from typing import TYPE_CHECKING

from .events import BACKGROUND

if TYPE_CHECKING:
    from .spans import RequestSpan


@dataclass(frozen=True, slots=True)
class Stretch:
    """A busy stretch at least as long as the stall threshold, as the loop saw it end."""

    start: float  # perf_counter
    end: float
    duration: float
    holders: dict[str, float]  # culprit -> seconds it held the loop in this stretch
    victims: dict[str, int]  # route -> in-flight requests that did not run in it
    thread_cpu: float  # thread_time() of the loop thread at the end
    process_cpu: float  # process_time() at the end


class Timeline:
    """Stretch bookkeeping for one loop; fed by a probe, read by spans and the watchdog."""

    def __init__(
        self,
        *,
        floor: float,
        threshold: float,
        exact: bool,
        on_stall: Callable[[Stretch], None],
        history: int = 4096,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        now = clock()
        self.floor = floor
        self.threshold = threshold
        self.exact = exact
        """True when stretches are timed at the poll itself, False when from the heartbeat."""
        self.on_stall = on_stall
        self.stretch_start = now
        self.lazy_start: Callable[[], float] | None = None
        """Where the probe learns a stretch's start only on demand (uvloop): how to ask."""
        self._start_id = -1
        self.origin_previous = True
        """A request's life starts with the previous stretch (asyncio: the server read it and
        created its task there) rather than the current one (uvloop: same iteration)."""
        self.prev_stretch_start = now
        self.busy_since: float | None = now
        """Start of the stretch in progress, None while polling: the watchdog's one read."""
        self.stretch_id = 0
        self.ran: list[RequestSpan] = []
        """Spans that ran in the stretch in progress (a span again if it ran after a fold)."""
        self.holders: dict[str, float] = {}
        self.held = 0.0
        self._cursor = 0
        self.in_flight: set[RequestSpan] = set()
        self.seq = 0
        self.prev_seq = 0
        self.totals: dict[str, float] = {}
        self._history = history
        self._ring: list[dict[str, float] | None] = [None] * history
        self._ring[0] = {}

    # -- fed by the probe -------------------------------------------------------------------

    def close(self, end: float, busy: float) -> None:
        """The loop is about to poll: the stretch that began at ``stretch_start`` ends."""
        self.prev_seq = self.seq
        self.prev_stretch_start = self.stretch_start
        if busy >= self.floor:
            self._log(end, busy)
        elif self.ran:
            self._reset_holders()
        self.stretch_id += 1

    def open(self, start: float) -> None:
        self.stretch_start = start

    def current_start(self) -> float:
        """Start of the stretch in progress (loop thread)."""
        lazy = self.lazy_start
        if lazy is not None and self._start_id != self.stretch_id:
            self._start_id = self.stretch_id
            self.stretch_start = lazy()
        return self.stretch_start

    def _fold(self) -> None:
        """Add the steps run since the last fold to the stretch's holders.

        Each span in ``ran`` carries how much of its time in this stretch is folded already
        (``counted``); a span that runs again after a fold is appended again. So every finishing
        request folds only what is new: the cost stays linear in the steps of a stretch,
        however many requests end inside it.
        """
        ran = self.ran
        holders = self.holders
        for i in range(self._cursor, len(ran)):
            span = ran[i]
            delta = span.stretch_time - span.counted
            if delta > 0.0:
                span.counted = span.stretch_time
                route = span.route_label()
                holders[route] = holders.get(route, 0.0) + delta
                self.held += delta
        self._cursor = len(ran)

    def _reset_holders(self) -> None:
        self.ran.clear()
        self._cursor = 0
        if self.holders:
            self.holders = {}
        self.held = 0.0

    def _log(self, end: float, busy: float) -> None:
        self._fold()
        holders = self.holders
        self.holders = {}  # this stretch keeps the folded dict; the next one starts afresh
        held = self.held
        for span in self.ran:
            if span.counted >= 0.0:  # once per span, though it may stand in ``ran`` twice
                span.own_long += span.stretch_time
                span.counted = -1.0
        self._reset_holders()
        if busy > held:
            holders[BACKGROUND] = holders.get(BACKGROUND, 0.0) + busy - held
        totals = self.totals
        for culprit, seconds in holders.items():
            totals[culprit] = totals.get(culprit, 0.0) + seconds
        self.seq += 1
        self._ring[self.seq % self._history] = dict(totals)
        if busy >= self.threshold:
            self.on_stall(
                Stretch(
                    start=end - busy,
                    end=end,
                    duration=busy,
                    holders=holders,
                    victims=self._victims(),
                    thread_cpu=thread_time(),
                    process_cpu=process_time(),
                )
            )

    def _victims(self) -> dict[str, int]:
        sid = self.stretch_id
        victims: dict[str, int] = {}
        for span in self.in_flight:
            if span.stretch_id != sid:
                route = span.route_label()
                victims[route] = victims.get(route, 0) + 1
        return victims

    # -- read by spans ----------------------------------------------------------------------

    def frozen(self, span: RequestSpan, end: float) -> dict[str, float] | None:
        """Seconds, by culprit, that other work held the loop during ``span``'s life."""
        partial = end - self.current_start() if self.exact else 0.0
        if self.seq == span.base_seq and partial < self.floor:
            return None
        frozen: dict[str, float] = {}
        if self.seq != span.base_seq:
            before = self._snapshot(span.base_seq)
            for culprit, seconds in self.totals.items():
                delta = seconds - before.get(culprit, 0.0)
                if delta > 0.0:
                    frozen[culprit] = delta
        own = span.own_long
        if partial >= self.floor:
            self._fold()
            for route, seconds in self.holders.items():
                frozen[route] = frozen.get(route, 0.0) + seconds
            if partial > self.held:
                frozen[BACKGROUND] = frozen.get(BACKGROUND, 0.0) + partial - self.held
            if span.stretch_id == self.stretch_id:
                own += span.stretch_time
        if own:
            route = span.route_label()
            left = frozen.get(route, 0.0) - own
            if left > 1e-9:
                frozen[route] = left
            else:
                frozen.pop(route, None)
        return frozen

    def _snapshot(self, seq: int) -> dict[str, float]:
        """Totals after ``seq`` long stretches; the oldest kept when ``seq`` is too old.

        A request that outlives ``history`` long stretches (a websocket open for hours under
        stalls) is charged only for the most recent ones: a bounded undercount, never more.
        """
        oldest = max(0, self.seq - self._history + 1)
        snapshot = self._ring[max(seq, oldest) % self._history]
        return snapshot if snapshot is not None else {}
