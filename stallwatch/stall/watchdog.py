"""The watchdog thread: notices a held loop while it is held, samples its stack, and turns
each stall the loop reports at its end into a ``StallEvent``.

Each look (``_tick``) says how long to sleep: until the earliest moment a stall could have
begun, so an idle loop costs a few wake-ups per threshold, or, parked, until the quiet loop's
poll returns. While the loop is held it samples every ``sample_interval``. The evidence it
gathers is weighed in ``evidence.py`` and ``decisions.py``. The thread itself, what wakes it
and the stretches the loop hands it are ``wakeups.py``'s. Its own errors are counted and
logged once; it never stops for them.

With a profile (``profile.ProfileSampler``) it also wakes at every moment of the profile's
grid (``1 / profile_rate`` apart) and, when the loop is busy then, samples the stack for the
line profile. A profile sample taken in a stretch that turns out to be a stall is one of the
stall's stacks too; samples of stretches that ended short are dropped once the loop has
moved on (``stretch_id``), so they cost no memory.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

from ..events import Frame, StallEvent
from ..loop.stretch import Stretch
from ..pools.readings import threads_during
from ..profile.sampler import Payer, ProfileSampler
from .evidence import Counters, Sample, stall_event, weigh
from .gcwatch import GC_WATCH
from .sampling import RawStack, StackSampler
from .threadstats import ThreadStats
from .wakeups import PARKED, Wakeups


@dataclass(frozen=True, slots=True)
class WatchdogLinks:
    """What the watchdog is given of the loop it watches: readers it may call from its
    thread, and where its findings go. It is never given the monitor itself."""

    loop: asyncio.AbstractEventLoop
    held_since: Callable[[], float | None]
    """When the loop last stopped polling, if it is busy now; None while it polls."""
    started_by: Callable[[], Frame | None]
    """Where the request's code started the task whose step runs now, if it did."""
    record: Callable[[StallEvent], None]
    """Takes each stall event (watchdog thread)."""
    on_error: Callable[[], None]
    """Counts and logs one error of the watchdog's own."""
    show_stall: Callable[[float], None]
    """Sets the stall-in-progress gauge (0 when none is)."""
    loop_closed: Callable[[], None]
    """The loop was closed under a running monitor: stop watching."""
    pool_busy: Callable[[], float] = float
    """Seconds pool threads have run work so far (``pools.PoolWatch.busy_seconds``)."""
    running: Callable[[], Payer | None] = lambda: None
    """The request whose step runs now, None for none (the profile charges it)."""
    step_began: Callable[[], float] = lambda: 0.0
    """When the innermost timed step in progress began (perf_counter)."""
    stretch_id: Callable[[], int] = lambda: 0
    """The number of the stretch in progress; a stretch's stall (if it was one) has been
    handed over before the number moves on."""
    quiet: Callable[[], bool] = lambda: False
    """The heartbeat is quiet (the loop has had nothing to do for a while)."""
    polling: Callable[[], bool] = lambda: False
    """The loop is in its poll now (exact only while quiet, on every probe)."""
    park: Callable[[Callable[[], None] | None], None] = lambda alarm: None
    """Have ``alarm`` called (once, on the loop thread) when the loop's poll next returns;
    None takes it back."""


class Watchdog:
    def __init__(
        self,
        links: WatchdogLinks,
        sampler: StackSampler,
        loop_native_id: int,
        *,
        threshold: float,
        sample_interval: float,
        profiler: ProfileSampler | None = None,
    ) -> None:
        self._links = links
        self._profiler = profiler
        self.threshold = threshold
        self.sample_interval = sample_interval
        self.stops_seen = 0
        """Bumped while the loop is seen stopped (between two ``run_*`` calls); the
        heartbeat reads it to tell a wait of the loop's from a callback's lag."""
        self._sampler = sampler
        self._stats = ThreadStats(sampler.thread_id, loop_native_id)
        self._samples: deque[Sample] = deque(maxlen=4096)
        # (intended, actual) of wake-ups that came late: the watchdog was held off in between
        self._late: deque[tuple[float, float]] = deque(maxlen=256)
        self._stopped: deque[float] = deque(maxlen=256)  # times the loop was seen stopped
        self._mark = self._counters()
        self._gauge_set = False
        self._sampled = 0
        self.max_late = max(0.010, 2 * sys.getswitchinterval())
        """A wake-up later than this was held off: the loop thread kept the GIL."""
        self._wakeups = Wakeups(
            f"stallwatch-watchdog-{id(links.loop):x}",
            tick=self._tick,
            turn=self._turn,
            on_error=links.on_error,
            retry=threshold,
            on_exit=self._stats.close,
        )

    # -- the thread (``wakeups.py``): started, stopped, handed stretches, settled ---------

    def stall_ended(self, stretch: Stretch) -> None:
        """A stretch past the threshold has ended (loop thread)."""
        self._wakeups.hand_over(stretch)

    def settle(self, timeout: float) -> bool:
        """Wait until every stall handed over so far has been turned into an event (or
        dropped); False if that took longer than ``timeout`` seconds."""
        return self._wakeups.settle(timeout)

    def start(self) -> None:
        self._wakeups.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._wakeups.stop(timeout)

    # -- one wake-up -----------------------------------------------------------------------------

    def _tick(self, intended: float | None) -> float:
        links = self._links
        loop = links.loop
        if loop.is_closed():
            self._wakeups.halt()
            links.loop_closed()
            return 0.0
        ended = links.stretch_id()  # before the hand-overs: a stall before it is handed over
        woke = perf_counter()
        if intended is not None and woke - intended > self.max_late:
            # Before the hand-overs are weighed: a host that kept this thread off a CPU while
            # a native call kept the GIL lets the loop hand the stall over before this first
            # look, and this late wake-up is the only proof of what held it.
            self._late.append((intended, woke))
        self._wakeups.drain()
        while self._samples and 0 <= self._samples[0].stretch < ended:
            self._samples.popleft()  # a profile sample of a stretch that ended short
        now = perf_counter()
        if not loop.is_running():
            self._stopped.append(now)
            self.stops_seen += 1
        since = links.held_since()
        profiled = (
            self._profile(now, since, ended, intended) if self._profiler is not None else False
        )
        threshold = self.threshold
        if since is not None and now - since >= threshold:
            links.show_stall(now - since)
            self._gauge_set = True
            if not profiled and (intended is None or now - intended <= self.max_late):
                self._sample(now)
            return self._until_due(self.sample_interval, now)
        if self._gauge_set:
            links.show_stall(0.0)
            self._gauge_set = False
        if now - self._mark.at >= threshold / 2:
            # Reading them costs tens of microseconds (/proc): no more often than a stall
            # could begin, however often the profile wakes the watchdog.
            self._mark = self._counters()
        if links.quiet() and self._wakeups.park(links.polling, links.park):
            return PARKED
        # Sleep until the earliest moment a stall could be under way: a stall that begins
        # just after this look is still caught within about one threshold of its start.
        if since is None:
            return self._until_due(threshold, now)
        return self._until_due(
            max(self.sample_interval, min(threshold, since + threshold - now)), now
        )

    def _until_due(self, timeout: float, now: float) -> float:
        """``timeout``, or less if the profile's next moment comes first."""
        profiler = self._profiler
        return timeout if profiler is None else max(0.0, min(timeout, profiler.due - now))

    def _profile(
        self, now: float, since: float | None, stretch: int, intended: float | None = None
    ) -> bool:
        """At a moment of the profile's grid, sample the loop if it is busy; True when a
        stack was read now (it serves a stall in progress too)."""
        profiler = self._profiler
        assert profiler is not None
        due = profiler.due
        if now < due:
            return False
        profiler.advance(now)
        profiler.settle(now)
        if now - due > self.max_late and intended is not None and now - intended <= self.max_late:
            return False  # parked while the loop polled, and woken when it stopped: no moment
        if since is None or since >= now:
            # Polling (uvloop's reader counts a poll in progress as the stretch to come), so
            # the GIL was free: the lateness is the OS's alone. An idle loop takes no sample.
            profiler.woke_idle(now - due)
            return False
        if not self._links.loop.is_running():
            return False
        payer = self._links.running()
        if now - due > self.max_late:
            # Held off: the loop thread kept the GIL past the moment (a native call); the
            # loop was busy then, as this stretch still runs: count it, name no line.
            profiler.add(now, None, payer)
            return False
        if payer is not None and self._links.step_began() > profiler.moment(due):
            # The step running now began after the moment: then the loop thread ran other
            # Python code and kept the GIL, and the watchdog got it only where this step let
            # it go (a blocking call). Naming this step's line would charge it with time that
            # was not its own: count the moment, name neither line nor request.
            profiler.add(now, None, None)
            return False
        stack = self._sample(now, probe=False, stretch=stretch)
        if stack is None:
            return False
        profiler.add(now, stack, payer)
        return True

    def _sample(self, now: float, *, probe: bool = True, stretch: int = -1) -> RawStack | None:
        stack = self._sampler.sample()
        task: str | None = None
        started_by: Frame | None = None
        try:
            current = asyncio.current_task(self._links.loop)
            if current is not None:
                task = current.get_name()
                # A task a request started carries the line that started it (tasks.py).
                started_by = self._links.started_by()
        except RuntimeError:
            pass
        # Reading /proc lets the GIL go and costs a hand-off back: every fourth sample is
        # enough to tell a thread waiting on the GIL from one blocked in a call.
        on_lock = None
        if probe:
            self._sampled += 1
            on_lock = self._stats.waiting_on_lock() if self._sampled % 4 == 1 else None
        self._samples.append(Sample(now, stack, task, started_by, on_lock, stretch))
        return stack

    def _counters(self) -> Counters:
        return Counters(
            at=perf_counter(),
            thread_cpu=self._stats.cpu(),
            process_cpu=time.process_time(),
            run_queue_wait=self._stats.run_queue_wait(),
            pool_busy=self._links.pool_busy(),
        )

    # -- turning stretches into events --------------------------------------------------------

    def _turn(self, stretch: Stretch) -> None:
        event = self._event(stretch)
        if event is not None:
            self._links.record(event)

    def _event(self, stretch: Stretch) -> StallEvent | None:
        samples = [s for s in self._samples if stretch.start <= s.at <= stretch.end]
        while self._samples and self._samples[0].at <= stretch.end:
            self._samples.popleft()
        if any(stretch.start <= t <= stretch.end for t in self._stopped):
            # The loop was stopped for part of it (between two run_until_complete calls):
            # not a stall, and whatever ran meanwhile was not on the loop.
            self._mark = self._counters()
            return None
        mark = self._mark
        wait_now = self._stats.run_queue_wait()
        gc_seconds = GC_WATCH.overlap(stretch.start, stretch.end)
        stacks, cause, cpu_ratio = weigh(stretch, samples, self._late, mark, wait_now, gc_seconds)
        # Pool threads that ran in the window, on average: what starvation competed with.
        pool_busy, now = self._links.pool_busy(), perf_counter()
        pool_threads = threads_during(mark.pool_busy, pool_busy, now - mark.at)
        # The next window starts where this one ended, with the loop thread's own readings.
        self._mark = Counters(
            stretch.end, stretch.thread_cpu, stretch.process_cpu, wait_now, pool_busy
        )

        return stall_event(
            stretch,
            samples,
            stacks,
            cause=cause,
            cpu_ratio=cpu_ratio,
            gc_seconds=gc_seconds,
            pool_threads=pool_threads,
            top_frame=self._sampler.top_frame,
        )
