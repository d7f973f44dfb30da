"""The heartbeat: a timer every ``interval`` whose lateness is the loop's lag, and that goes
quiet while nothing runs.

A beat that runs ``L`` late measures what any callback that became ready with it waited;
the beats that were due while the loop was held never ran, so the lag each would have seen
(``L - i``, ``L - 2i``, ...) is recorded too (the expected-interval correction), and one
long stall weighs in the histogram as it weighs on traffic.

A loop with nothing to do still woke a hundred times a second for the beat, and the beat
woke the watchdog: most of what an idle pod paid. So after ``QUIET_AFTER`` seconds with no
long stretch (one of ``floor`` or more) and no request in flight, the heartbeat goes quiet:
it beats every ``QUIET_FACTOR`` intervals, and each quiet beat stands for the intervals it
skipped. While quiet, the probe (which times every stretch anyway) hands every long stretch
to ``stretch_seen``, which records the lags the skipped beats would have seen in it: a
stretch ``D`` long holds a beat due every interval from half an interval into it, and each
waits until ``D``'s end. The first busy beat brings the heartbeat back. Only probes that can
tell the timeline when a poll returns allow quiet (``Probe.tell_wakeups``), because the
watchdog parks while the loop is quiet and idle, and the loop wakes it.

Loop thread only, but for ``quiet``, which the watchdog reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

from ..shedding import recent_lag
from .probes import Probe
from .timeline import Timeline

QUIET_AFTER = 1.0
"""Seconds with no long stretch and no request in flight before the heartbeat goes quiet."""
QUIET_FACTOR = 10
"""A quiet heartbeat beats once every this many intervals (10 Hz at the default 10 ms)."""


@dataclass(frozen=True, slots=True)
class HeartbeatLinks:
    """What the heartbeat is given: where a lag goes, and what else runs on its beat."""

    observe: Callable[[float], None]
    """One beat's lag, seconds (the histogram, the report's history, OpenTelemetry)."""
    stops_seen: Callable[[], int]
    """How often the loop was seen stopped: a wait across a stop is no callback's lag."""
    every_tenth: Callable[[], None]
    """About ten times a second: keep the task factory chained, flush the tallies."""
    on_error: Callable[[], None]


class Heartbeat:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeline: Timeline,
        probe: Probe,
        links: HeartbeatLinks,
        *,
        interval: float,
    ) -> None:
        self._loop = loop
        self._timeline = timeline
        self._probe = probe
        self._links = links
        self.interval = interval
        self.quiet = False
        """Beating once every ``QUIET_FACTOR`` intervals (read by the watchdog thread)."""
        self._running = False
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._due_at = perf_counter()  # the same moment on perf_counter: any thread reads it
        self._lateness = 0.0
        self._weight = 1
        self._seen = 0  # beats recorded from stretches since the last beat (quiet only)
        self._covered = 0.0  # loop time up to which stretches were recorded (quiet only)
        self._calm = 0.0
        self._seq = timeline.seq
        self._stops = links.stops_seen()
        self._to_flush = 0.0

    def start(self) -> None:
        self._running = True
        self._schedule()

    def stop(self) -> None:
        self._running = False
        if self._handle is not None:
            self._handle.cancel()
        self._rouse()

    # -- the beat -------------------------------------------------------------------------------

    def _schedule(self) -> None:
        self._weight = QUIET_FACTOR if self.quiet else 1
        self._due = self._loop.time() + self.interval * self._weight
        self._due_at = perf_counter() + self.interval * self._weight
        self._handle = self._loop.call_at(self._due, self._beat)

    def _beat(self) -> None:
        if not self._running:
            return
        try:
            now = perf_counter()
            lateness = self._loop.time() - self._due
            stops = self._links.stops_seen()
            self._lateness = lateness if stops == self._stops else 0.0
            if stops != self._stops:
                self._stops = stops  # the loop was stopped since: that wait was nobody's lag
            elif self._due <= self._covered:
                self._fill(self._weight - self._seen, 0.0)  # its stretch is recorded already
            else:
                self._record(lateness)
            self._seen = 0
            self._probe.beat(now, lateness)
            self._to_flush += self._weight * self.interval
            if self._to_flush >= 0.1:
                self._to_flush = 0.0
                self._links.every_tenth()
            self._choose()
        except Exception:
            self._links.on_error()
        finally:
            if self._running:
                self._schedule()

    def _record(self, lateness: float) -> None:
        observe = self._links.observe
        late = max(lateness, 0.0)
        observe(late)
        # The beats a quiet beat skipped ran, had they existed, as it did: on time.
        self._fill(self._weight - 1 - self._seen, late if late < self.interval else 0.0)
        interval = self.interval
        missed = lateness - interval
        # Not > 0.0: on uvloop's millisecond clock a lateness is often an exact multiple
        # of the interval, and rounding would add a beat of ~0 lag.
        while missed > 1e-9:
            observe(missed)
            missed -= interval

    def _fill(self, beats: int, lag: float) -> None:
        observe = self._links.observe
        for _ in range(beats):
            observe(lag)

    def recent_lag(self) -> float:
        """How late a callback due now would run: the last beat's lateness, or how overdue
        the next beat already is (any thread; what shedding and ``/livez`` read)."""
        return recent_lag(self._lateness, perf_counter() - self._due_at)

    # -- quiet, and back --------------------------------------------------------------------------

    def _choose(self) -> None:
        timeline = self._timeline
        busy = timeline.seq != self._seq or bool(timeline.in_flight)
        self._seq = timeline.seq
        if busy:
            self._calm = 0.0
            if self.quiet:
                self._rouse()
        elif not self.quiet:
            self._calm += self._weight * self.interval
            if self._calm >= QUIET_AFTER and self._probe.tell_wakeups(True):
                self.quiet = True
                timeline.on_long = self.stretch_seen

    def _rouse(self) -> None:
        if self.quiet:
            self.quiet = False
            self._timeline.on_long = None
            self._probe.tell_wakeups(False)

    def stretch_seen(self, start: float, seconds: float) -> None:
        """A long stretch ended while quiet (timeline, loop thread): record the beats that
        would have been due in it, each waiting until its end."""
        interval = self.interval
        lag = seconds - interval / 2
        while lag > 1e-9:
            self._links.observe(lag)
            self._seen += 1
            lag -= interval
        # The quiet beat due inside this stretch, if one was, must not count it again.
        self._covered = self._loop.time()
