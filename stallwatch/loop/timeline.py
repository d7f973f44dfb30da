"""Busy stretches of the event loop and who held the loop in each.

A *busy stretch* is the time between two polls of the event loop: while it lasts, finished I/O,
expired timers and new connections wait. The probe (``probes.py``) tells the timeline when the
loop is about to poll and when the poll returned; request steps (``spans.py``) tell it which
request ran, for how long. From the two the timeline knows, for every stretch longer than the
floor, how many seconds each route held the loop; it keeps running totals of those seconds so
that a finishing request can learn what froze it during its life from two snapshots, without a
loop over stretches.

The timeline is the one owner of this state: the probe, the spans and the middleware change it
only through the methods below. The per-stretch fields of a span (``stretch_id``,
``stretch_time``, ``folded``, ``own_long``) are the timeline's, kept on the span for speed.
Everything here runs on the loop thread only, so nothing is locked.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter, process_time, thread_time

from ..events import BACKGROUND
from .allowance import Allowance
from .steps import StepClock
from .stretch import Holders, SpanBook, Stretch

__all__ = ["SpanBook", "Stretch", "Timeline"]


_NONE: dict[str, float] = {}


class Timeline(StepClock):
    """Stretch bookkeeping for one loop; fed by a probe, read by spans and the watchdog."""

    def __init__(
        self,
        *,
        floor: float,
        threshold: float,
        on_stall: Callable[[Stretch], None],
        clock: Callable[[], float] = perf_counter,
        current: Callable[[], SpanBook | None] = lambda: None,
    ) -> None:
        now = clock()
        self.floor = floor
        self.threshold = threshold
        self.on_stall = on_stall
        self.exact = False
        """True when stretches are timed at the poll itself, False when from the heartbeat."""
        self.origin_previous = False
        """A request's life starts with the previous stretch (asyncio: the server read it and
        created its task there) rather than the current one (uvloop: same iteration)."""
        self._lazy_start: Callable[[], float] | None = None
        self._start_id = -1
        self.stretch_start = now
        self.prev_stretch_start = now
        self.busy_since: float | None = now
        """Start of the stretch in progress, None while polling: the watchdog's one read."""
        self.stretch_id = 0
        self.in_progress = Holders()
        """Who held the stretch in progress (read by OpenTelemetry for a stall not over)."""
        # The step accounting's fields (``steps.StepClock`` says what each one is): its ``ran``
        # is the holders' own list, and whoever ``current`` names pays for a task's step.
        self.ran = self.in_progress.ran
        self.clock = clock
        self.nested = 0.0
        self.step_began = now
        self.current = current
        self.running = None
        self.late_busy = {}
        self.in_flight: set[SpanBook] = set()
        self.seq = 0
        self.prev_seq = 0
        self.totals: dict[str, float] = {}
        """Seconds each culprit held the loop in all long stretches so far. A request keeps a
        reference to the totals as they were when it began (``origin``); such a dict is
        *pinned* and never changed again: the next long stretch adds to a copy. So the loop
        thread copies at most once per long stretch, and only when a request began since
        the last copy; the copies live as long as the requests that hold them."""
        self._pinned = True
        self.last_holders: dict[str, float] = {}
        """The holders of the last long stretch, if the last stretch was long."""
        self.on_long: Callable[[float, float], None] | None = None
        """Told (start, seconds) of every long stretch while the heartbeat is quiet."""
        self.on_wake: Callable[[], None] | None = None
        """Called once, and forgotten, the next time a poll returns (the parked watchdog's
        alarm: ``woke``)."""
        self.allowance = Allowance()
        """What ran inside ``allow_blocking()`` in the stretch in progress (``allow.py``)."""

    def timed_by(
        self, *, exact: bool, origin_previous: bool, lazy_start: Callable[[], float] | None = None
    ) -> None:
        """How the probe that feeds this timeline sees the loop (set once, at start)."""
        self.exact = exact
        self.origin_previous = origin_previous
        self._lazy_start = lazy_start

    # -- fed by the probe -------------------------------------------------------------------

    def about_to_poll(self, now: float, start: float | None = None) -> None:
        """The loop is about to poll: the stretch in progress ends now (it began at ``start``
        where the probe learns that only now)."""
        self.busy_since = None
        if start is None:
            start = self.stretch_start
        else:
            self.stretch_start = start
        busy = now - start
        self.prev_seq = self.seq
        self.prev_stretch_start = start
        if busy >= self.floor:
            self._log(now, busy)
        elif self.ran:
            self.in_progress.reset()
        self.allowance.held = 0.0
        self.stretch_id += 1

    def poll_returned(self, now: float) -> None:
        """The poll returned: a stretch begins."""
        self.stretch_start = self.busy_since = now
        if self.on_wake is not None:
            self.woke()

    def woke(self) -> None:
        """A poll returned: sound the alarm set in ``on_wake``, once."""
        alarm = self.on_wake
        if alarm is not None:
            self.on_wake = None
            alarm()

    def current_start(self) -> float:
        """Start of the stretch in progress (loop thread)."""
        lazy = self._lazy_start
        if lazy is not None and self._start_id != self.stretch_id:
            self._start_id = self.stretch_id
            self.stretch_start = lazy()
        return self.stretch_start

    # -- fed by the spans -------------------------------------------------------------------

    def origin(self) -> tuple[float, int, dict[str, float], dict[str, float]]:
        """Where a request that starts now begins its life: (perf_counter, seq, the totals
        then, less what to take off them).

        Under asyncio its first step runs in the stretch after the one in which the server
        read it and created its task; under uvloop, in the same one. Where polls are not
        timed: its first step. The totals are pinned (see ``totals``); where the life began
        before the last long stretch, that stretch's holders are taken off them.
        """
        self._pinned = True
        totals = self.totals
        if not self.exact:
            return perf_counter(), self.seq, totals, _NONE
        if self.origin_previous:
            less = self.last_holders if self.prev_seq != self.seq else _NONE
            return self.prev_stretch_start, self.prev_seq, totals, less
        return self.current_start(), self.seq, totals, _NONE

    def request_started(self, span: SpanBook) -> None:
        self.in_flight.add(span)

    def request_ended(self, span: SpanBook, end: float) -> None:
        self.in_flight.discard(span)
        span.done = True
        span.ended = end
        span.ended_in = self.stretch_id

    def take_late_busy(self) -> dict[str, float]:
        late, self.late_busy = self.late_busy, {}
        return late

    # -- the stretch's end ------------------------------------------------------------------

    def _log(self, end: float, busy: float) -> None:
        stretch = self.in_progress
        stall = busy >= self.threshold
        froze = traces = None
        if stall:  # before ``ran`` is reset
            stretch.fold()
            froze = stretch.victims(self.in_flight, self.stretch_id, end, busy, self.floor)
            traces = stretch.traces()
        holders, held = stretch.close()
        if busy > held:
            holders[BACKGROUND] = holders.get(BACKGROUND, 0.0) + busy - held
        totals = self.totals
        if self._pinned:
            totals = self.totals = dict(totals)
            self._pinned = False
        for culprit, seconds in holders.items():
            totals[culprit] = totals.get(culprit, 0.0) + seconds
        self.last_holders = holders
        self.seq += 1
        if self.on_long is not None:
            self.on_long(end - busy, busy)
        if froze is not None:
            self.on_stall(
                Stretch(
                    start=end - busy,
                    end=end,
                    duration=busy,
                    holders=holders,
                    victims=froze[0],
                    frozen=froze[1],
                    thread_cpu=thread_time(),
                    process_cpu=process_time(),
                    allowed=self.allowance.allowed(end, busy),
                    traces=traces or {},
                )
            )

    # -- read by spans ----------------------------------------------------------------------

    def frozen(self, span: SpanBook, end: float) -> dict[str, float] | None:
        """Seconds, by culprit, that other work held the loop during ``span``'s life."""
        partial = end - self.current_start() if self.exact else 0.0
        if self.seq == span.base_seq and partial < self.floor:
            return None
        frozen: dict[str, float] = {}
        if self.seq != span.base_seq:
            before = span.base
            less = span.base_less
            for culprit, seconds in self.totals.items():
                delta = seconds - before.get(culprit, 0.0) + less.get(culprit, 0.0)
                if delta > 1e-12:
                    frozen[culprit] = delta
        own = span.own_long
        if partial >= self.floor:
            stretch = self.in_progress
            stretch.fold()
            for route, seconds in stretch.holders.items():
                frozen[route] = frozen.get(route, 0.0) + seconds
            if partial > stretch.held:
                frozen[BACKGROUND] = frozen.get(BACKGROUND, 0.0) + partial - stretch.held
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
