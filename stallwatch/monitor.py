"""``LoopMonitor``: the heartbeat, the probe and the watchdog of one event loop.

One monitor per loop. The heartbeat measures lag (what a newly ready callback waits); the
probe times busy stretches; the watchdog thread samples the stack while the loop is held and
reports each stall once it ends. Everything the monitor does on the loop thread is a few
clock reads per iteration; the rest happens on the watchdog thread.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections import deque
from collections.abc import Callable
from time import perf_counter
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry

from .events import StallEvent
from .gcwatch import GC_WATCH
from .metrics import Metrics, metrics_for
from .probes import HeartbeatProbe, PollProbe, PreparePollProbe
from .timeline import Stretch, Timeline
from .uvloop_idle import LibUV
from .watchdog import Watchdog

logger = logging.getLogger("stallwatch")

_monitors: dict[int, LoopMonitor] = {}
_monitors_lock = threading.Lock()


def get_monitor(loop: asyncio.AbstractEventLoop | None = None) -> LoopMonitor | None:
    """The running monitor of ``loop`` (the running loop by default), or None."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
    monitor = _monitors.get(id(loop))
    return monitor if monitor is not None and monitor.loop is loop else None


def _check(name: str, value: float, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low} to {high} seconds, got {value!r}")
    return float(value)


class LoopMonitor:
    """Watches one asyncio event loop: lag, stalls, and the code that caused them."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        interval: float = 0.010,
        stall_threshold: float = 0.020,
        floor: float = 0.001,
        sample_interval: float = 0.005,
        history: int = 100,
        registry: CollectorRegistry | None = None,
        lag_buckets: tuple[float, ...] | None = None,
        log_every: float = 10.0,
        log_burst: int = 5,
    ) -> None:
        self.interval = _check("interval", interval, 0.001, 10.0)
        self.stall_threshold = _check("stall_threshold", stall_threshold, 0.001, 60.0)
        self.floor = _check("floor", floor, 0.0, self.stall_threshold)
        self.sample_interval = _check("sample_interval", sample_interval, 0.0005, 1.0)
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be a positive integer, got {history!r}")
        if log_burst < 1 or log_every <= 0:
            raise ValueError(
                f"log_burst and log_every must be positive, got {log_burst!r}, {log_every!r}"
            )
        self._loop = loop
        self.metrics: Metrics = metrics_for(registry, lag_buckets=lag_buckets)
        self._history: deque[StallEvent] = deque(maxlen=history)
        self._log_every = log_every
        self._log_burst = log_burst
        self._tokens = float(log_burst)
        self._tokens_at = perf_counter()
        self._suppressed = 0
        self._logged_errors: set[str] = set()
        self._errors: dict[str, Any] = {}
        self._started = False
        self._loop_thread = 0
        self._timeline: Timeline | None = None
        self._probe: PollProbe | PreparePollProbe | HeartbeatProbe | None = None
        self._watchdog: Watchdog | None = None
        self._beat: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.last_beat = 0.0
        self._flushers: list[Callable[[], None]] = []
        self._beats_to_flush = 0
        self.stops_seen = 0
        """Bumped by the watchdog while the loop is stopped (between two ``run_*`` calls)."""
        self._beat_stops = 0

    # -- public ----------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the monitor has no loop until it is started")
        return self._loop

    @property
    def timeline(self) -> Timeline:
        if self._timeline is None:
            raise RuntimeError("the monitor is not started")
        return self._timeline

    @property
    def running(self) -> bool:
        return self._started

    @property
    def probe(self) -> str:
        """How stretches are timed: ``poll`` (asyncio) and ``uv-prepare`` (uvloop) are exact;
        ``heartbeat+uv-idle`` and ``heartbeat`` are the fallbacks."""
        return self._probe.name if self._probe is not None else "none"

    def add_flusher(self, flush: Callable[[], None]) -> None:
        """Run ``flush`` on the loop thread about ten times a second and before each scrape."""
        if flush not in self._flushers:
            self._flushers.append(flush)

    def remove_flusher(self, flush: Callable[[], None]) -> None:
        if flush in self._flushers:
            self._flushers.remove(flush)

    def flush(self) -> None:
        """Hand what the middleware counted to prometheus-client now (loop thread)."""
        for flush in self._flushers:
            flush()

    def recent_stalls(self) -> list[StallEvent]:
        """The last stall events, oldest first."""
        return list(self._history)

    def start(self) -> bool:
        """Start watching; call it on the loop's thread. False if the loop was watched already."""
        if self._started:
            logger.info("stallwatch: this monitor is already running")
            return False
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        loop = self._loop
        if loop.is_closed():
            raise RuntimeError("cannot monitor a closed event loop")
        with _monitors_lock:
            existing = get_monitor(loop)
            if existing is not None:
                logger.info("stallwatch: loop %r is already monitored; not starting twice", loop)
                return False
            _monitors[id(loop)] = self
        selector = PollProbe.selector_of(loop)
        self._timeline = Timeline(
            floor=self.floor,
            threshold=self.stall_threshold,
            exact=selector is not None,
            on_stall=self._stall_ended,
        )
        self._probe = self._install_probe(loop, selector, self._timeline)
        self._loop_thread = threading.get_ident()
        self._watchdog = Watchdog(self, self._loop_thread, threading.get_native_id())
        GC_WATCH.acquire()
        self._started = True
        self.last_beat = perf_counter()
        self._due = loop.time() + self.interval
        self._beat = loop.call_at(self._due, self._heartbeat)
        self._watchdog.start()
        _register_atexit()
        return True

    @staticmethod
    def _install_probe(
        loop: asyncio.AbstractEventLoop, selector: object, timeline: Timeline
    ) -> PollProbe | PreparePollProbe | HeartbeatProbe:
        if selector is not None:
            poll = PollProbe(selector, timeline)
            poll.install()
            return poll
        libuv = LibUV.attach(loop)
        if libuv is not None:
            prepare = PreparePollProbe(loop, timeline, libuv)
            if prepare.install():
                timeline.exact = True
                timeline.origin_previous = False
                return prepare
        return HeartbeatProbe(timeline, libuv)

    def stop(self) -> None:
        """Stop watching and join the watchdog thread; safe to call twice or from any thread."""
        if not self._started:
            return
        self._started = False
        with _monitors_lock:
            if _monitors.get(id(self._loop)) is self:
                del _monitors[id(self._loop)]
        loop = self._loop
        if (
            loop is not None
            and threading.get_ident() != self._loop_thread
            and loop.is_running()
            and not loop.is_closed()
        ):
            # The probe's hooks belong to the loop thread (libuv is not thread-safe): undo
            # them there, on the loop's next turn.
            loop.call_soon_threadsafe(self._detach)
        else:
            self._detach()
        if self._watchdog is not None:
            self._watchdog.stop()
        GC_WATCH.release()

    def _detach(self) -> None:
        try:
            self.flush()  # counts not yet handed to prometheus-client would be lost otherwise
        except Exception:
            self.internal_error("middleware")
        if self._beat is not None:
            self._beat.cancel()
        if self._probe is not None:
            self._probe.uninstall()

    async def __aenter__(self) -> LoopMonitor:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the heartbeat (loop thread) ---------------------------------------------------------

    def held_since(self) -> float | None:
        """When the loop last stopped polling, if it is busy now (watchdog thread)."""
        timeline = self._timeline
        if timeline is None or not self.loop.is_running():
            return None  # a stopped loop is not a stalled one
        probe = self._probe
        if isinstance(probe, PreparePollProbe):
            return probe.held_since()
        if timeline.exact:
            return timeline.busy_since
        return self.last_beat + self.interval

    def _heartbeat(self) -> None:
        if not self._started:
            return
        try:
            loop = self.loop
            now_loop = loop.time()
            now = perf_counter()
            lateness = now_loop - self._due
            self.last_beat = now
            lag = self.metrics.lag
            interval = self.interval
            stops = self.stops_seen
            if stops != self._beat_stops:
                # The loop was stopped since the last beat: that wait was no callback's lag.
                self._beat_stops = stops
            else:
                lag.observe(max(lateness, 0.0))
                # The beats that were due while the loop was held never ran: record the lag
                # each would have seen, or the histogram hides exactly the stalls it exists
                # to show.
                missed = lateness - interval
                # Not > 0.0: on uvloop's millisecond clock a lateness is often an exact
                # multiple of the interval, and rounding would add a beat of ~0 lag.
                while missed > 1e-9:
                    lag.observe(missed)
                    missed -= interval
            if isinstance(self._probe, HeartbeatProbe):
                self._probe.beat(now, lateness)
            self._beats_to_flush -= 1
            if self._beats_to_flush <= 0:
                self._beats_to_flush = max(1, round(0.1 / interval))
                self.flush()
        except Exception:
            self.internal_error("heartbeat", once=True)
        finally:
            if self._started:
                self._due = self.loop.time() + self.interval
                self._beat = self.loop.call_at(self._due, self._heartbeat)

    # -- stalls (the loop thread hands over, the watchdog records) ---------------------------

    def _stall_ended(self, stretch: Stretch) -> None:
        if self._watchdog is not None:
            self._watchdog.stall_ended(stretch)

    def record(self, event: StallEvent) -> None:
        """Store, count and log one stall (watchdog thread)."""
        self._history.append(event)
        metrics = self.metrics
        metrics.stalls.labels(event.culprit, event.cause).inc()
        metrics.stall_seconds.labels(event.culprit, event.cause).observe(event.duration)
        self._log(event)

    def _log(self, event: StallEvent) -> None:
        now = perf_counter()
        self._tokens = min(
            float(self._log_burst),
            self._tokens + (now - self._tokens_at) * self._log_burst / self._log_every,
        )
        self._tokens_at = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return
        self._tokens -= 1.0
        suppressed, self._suppressed = self._suppressed, 0
        logger.warning(
            "event loop stalled for %.1f ms (%s) by %s at %s; victims in flight: %s%s",
            event.duration * 1e3,
            event.cause,
            event.culprit,
            event.top_frame or "no stack sampled",
            ", ".join(f"{route} x{n}" for route, n in event.victims.items()) or "none",
            f" ({suppressed} earlier stalls not logged)" if suppressed else "",
        )

    def internal_error(self, component: str, *, once: bool = True) -> None:
        """Count an error of stallwatch's own and log it the first time; never raise."""
        try:
            child = self._errors.get(component)
            if child is None:
                child = self._errors[component] = self.metrics.internal_errors.labels(component)
            child.inc()
            if component not in self._logged_errors or not once:
                self._logged_errors.add(component)
                logger.exception(
                    "stallwatch: internal error in %s (counted, not raised)", component
                )
        except Exception:  # pragma: no cover - the last line of defence
            pass


_atexit_registered = False


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(_stop_all)


def _stop_all() -> None:
    for monitor in list(_monitors.values()):
        monitor.stop()
