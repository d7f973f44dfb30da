"""``LoopMonitor``: the heartbeat, the probe, the task factory and the watchdog of one loop.

One monitor per loop. The heartbeat measures lag (what a newly ready callback waits); the
probe times busy stretches; the task factory hands the tasks a request starts to that
request; the watchdog thread samples the stack while the loop is held and reports each stall
once it ends. Everything the monitor does on the loop thread is a few clock reads per
iteration; the rest happens on the watchdog thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .errors import InternalErrors
from .events import StallEvent
from .loop import registry
from .loop.heartbeat import Heartbeat, HeartbeatLinks
from .loop.history import LoopHistory
from .loop.probes import Probe, choose_probe
from .loop.timeline import Stretch, Timeline
from .metrics import Metrics, metrics_for
from .options import MonitorOptions, monitor_options
from .pools import PoolMetrics, PoolWatch
from .profile import LoopProfile, ProfileSampler
from .request.tasks import CURRENT, TaskAttribution
from .stall.gcwatch import GC_WATCH
from .stall.record import StallRecord
from .stall.sampling import StackSampler, frames_of
from .stall.watchdog import Watchdog, WatchdogLinks

if TYPE_CHECKING:
    from .otel.stalls import LoopTelemetry

logger = logging.getLogger("stallwatch")


def get_monitor(loop: asyncio.AbstractEventLoop | None = None) -> LoopMonitor | None:
    """The running monitor of ``loop`` (the running loop by default), or None."""
    found = registry.get_watcher(loop)
    return found if isinstance(found, LoopMonitor) else None


class LoopMonitor:
    """Watches one asyncio event loop: lag, stalls, and the code that caused them.

    Options are keyword arguments (see ``MonitorOptions`` for each one), or one
    ``options=MonitorOptions(...)``; they are checked here, not when the loop starts.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        options: MonitorOptions | None = None,
        **kwargs: Any,
    ) -> None:
        if options is None:
            options = monitor_options("LoopMonitor", kwargs)
        elif kwargs:
            raise TypeError("LoopMonitor takes options= or keyword options, not both")
        self.options = options
        self.interval = options.interval
        self.stall_threshold = options.stall_threshold
        self.floor = options.floor
        self.sample_interval = options.sample_interval
        self._loop = loop
        self.metrics: Metrics = metrics_for(options.registry, lag_buckets=options.lag_buckets)
        self.history = LoopHistory()
        """The last minutes of lag, route busy time and frozen time, for the report."""
        self.profile: LoopProfile | None = None
        """Where the loop's time goes, by route and line, over the history's window
        (``profile/``); None with ``profile=False``."""
        if options.profile:
            self.profile = LoopProfile(
                period=1.0 / options.profile_rate,
                lines=options.profile_lines,
                span=self.history.span,
            )
        self._profiler: ProfileSampler | None = None
        self.errors = InternalErrors(self.metrics.internal_errors)
        """Where every part watching this loop counts its own errors (``errors.py``)."""
        self.telemetry: LoopTelemetry | None = None
        """With ``opentelemetry=True``: stall spans and the loop's OpenTelemetry metrics."""
        if options.opentelemetry:
            from .otel import loop_telemetry  # OpenTelemetry is imported only when asked for

            self.telemetry = loop_telemetry(
                self.metrics, floor=options.floor, stacks=options.opentelemetry_stacks
            )
        self._stalls = StallRecord(
            self.metrics,
            history=options.history,
            log_every=options.log_every,
            log_burst=options.log_burst,
            telemetry=self.telemetry,
            on_error=self.internal_error,
        )
        self._started = False
        self._loop_thread = 0
        self._timeline: Timeline | None = None
        self._probe: Probe | None = None
        self._tasks: TaskAttribution | None = None
        self._watchdog: Watchdog | None = None
        self._heartbeat: Heartbeat | None = None
        self._pools: PoolWatch | None = None
        self.sampler: StackSampler | None = None
        """The loop thread's stack reader (``/livez`` names the line holding the loop)."""
        self._flushers: list[Callable[[], None]] = []
        self._closer: Callable[[], None] | None = None

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

    def settle(self, timeout: float = 1.0) -> bool:
        """Wait until every stall that has ended is in ``recent_stalls()`` (any thread but
        the loop's); False if the watchdog took longer than ``timeout`` seconds."""
        watchdog = self._watchdog
        return watchdog.settle(timeout) if watchdog is not None else True

    def recent_stalls(self) -> list[StallEvent]:
        """The last stall events, oldest first."""
        return self._stalls.recent()

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
        if not registry.claim(loop, self):
            logger.info("stallwatch: loop %r is already monitored; not starting twice", loop)
            return False
        self._loop_thread = threading.get_ident()
        sampler = StackSampler(self._loop_thread, in_app_include=self.options.in_app_include)
        timeline = self._timeline = Timeline(
            floor=self.floor,
            threshold=self.stall_threshold,
            on_stall=self._stall_ended,
            current=CURRENT.get,
        )
        self._probe = choose_probe(
            loop, timeline, interval=self.interval, on_error=lambda: self.internal_error("probe")
        )
        self._tasks = TaskAttribution(
            loop, timeline, sampler.started_by, lambda: self.internal_error("tasks")
        )
        self._tasks.install()
        self.sampler = sampler
        metrics = self.metrics
        pools = self._pools = PoolWatch(
            loop,
            PoolMetrics(
                *self._pool_histograms(),
                metrics.executor_threads,
                metrics.executor_waiting,
            ),
            lambda: self.internal_error("pools"),
        )
        pools.install()
        tasks = self._tasks
        if self._profiler is not None:
            self.remove_flusher(self._profiler.name_pending)  # a previous run's
            self._profiler = None
        if self.profile is not None:
            self._profiler = ProfileSampler(
                self.profile, frames=frames_of, top_frame=sampler.top_frame
            )
            self.add_flusher(self._profiler.name_pending)
        heartbeat: Heartbeat | None = None  # made below, once the watchdog it reads exists
        self._watchdog = Watchdog(
            WatchdogLinks(
                loop=loop,
                held_since=self.held_since,
                started_by=lambda: tasks.origin,
                record=self._stalls.record,
                on_error=lambda: self.internal_error("watchdog", once=True),
                show_stall=self.metrics.stall_in_progress.set,
                loop_closed=self.stop,
                pool_busy=pools.busy_seconds,
                running=lambda: timeline.running,
                step_began=lambda: timeline.step_began,
                stretch_id=lambda: timeline.stretch_id,
                quiet=lambda: heartbeat is not None and heartbeat.quiet,
                polling=lambda: timeline.busy_since is None,
                park=self._park,
            ),
            sampler,
            threading.get_native_id(),
            threshold=self.stall_threshold,
            sample_interval=self.sample_interval,
            profiler=self._profiler,
        )
        GC_WATCH.acquire()
        self._stop_on_close(loop)
        watchdog = self._watchdog
        self._heartbeat = heartbeat = Heartbeat(
            loop,
            timeline,
            self._probe,
            HeartbeatLinks(
                observe=self._observe_lag,
                stops_seen=lambda: watchdog.stops_seen,
                every_tenth=self._every_tenth,
                on_error=lambda: self.internal_error("heartbeat", once=True),
            ),
            interval=self.interval,
        )
        self._started = True
        self._heartbeat.start()
        self._watchdog.start()
        return True

    def stop(self) -> None:
        """Stop watching and join the watchdog thread; safe to call twice or from any thread."""
        if not self._started:
            return
        self._started = False
        registry.release(self._loop, self)
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

    def _stop_on_close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop, and join the watchdog, as the loop closes (``asyncio.run`` closes it): no
        thread of ours outlives the loop, whoever counts the threads after it."""
        own = getattr(loop, "__dict__", None)
        if own is None:
            return  # a loop class with __slots__: the watchdog stops at its next look
        original = loop.close

        def close() -> None:
            self.stop()
            original()

        loop.close = close  # type: ignore[method-assign]
        self._closer = close

    def _detach(self) -> None:
        loop = self._loop
        if loop is not None and getattr(loop, "__dict__", {}).get("close") is self._closer:
            del loop.close  # a close set after ours stays, and calls ours, which calls stop
        try:
            self.flush()  # counts not yet handed to prometheus-client would be lost otherwise
        except Exception:
            self.internal_error("middleware")
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._probe is not None:
            self._probe.uninstall()
        if self._tasks is not None:
            self._tasks.uninstall()
        if self._pools is not None:
            self._pools.uninstall()

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

    @property
    def pools(self) -> PoolWatch | None:
        """The default executor and anyio's limiter of this loop, while watched."""
        return self._pools

    def recent_lag(self) -> float:
        """How late a callback due now would run (any thread; shedding and ``/livez``)."""
        heartbeat = self._heartbeat
        return heartbeat.recent_lag() if heartbeat is not None else 0.0

    # -- the heartbeat (loop thread) ---------------------------------------------------------

    def held_since(self) -> float | None:
        """When the loop last stopped polling, if it is busy now (watchdog thread)."""
        probe = self._probe
        if probe is None or not self.loop.is_running():
            return None  # a stopped loop is not a stalled one
        return probe.held_since()

    def _observe_lag(self, late: float) -> None:
        """One beat's lag, seconds, wherever lag goes (the heartbeat calls it)."""
        self.metrics.lag.observe(late)
        self.history.beat(late)
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.lag(late)

    def _pool_histograms(self) -> tuple[Any, Any]:
        """The pools' two histograms; with OpenTelemetry, each also records into its twin."""
        metrics, telemetry = self.metrics, self.telemetry
        if telemetry is None:
            return metrics.executor_queue_wait, metrics.executor_run
        return telemetry.teed_pool_histograms(metrics)

    def _park(self, alarm: Callable[[], None] | None) -> None:
        timeline = self._timeline
        if timeline is not None:
            timeline.on_wake = alarm

    def _every_tenth(self) -> None:
        if self._tasks is not None:
            self._tasks.keep_installed()
        self.flush()

    # -- stalls (the loop thread hands over, the watchdog records) ---------------------------

    def _stall_ended(self, stretch: Stretch) -> None:
        if self._watchdog is not None and self._timeline is not None:
            self._watchdog.stall_ended(
                self._stalls.stretch_ended(stretch, self._timeline.stretch_id)
            )

    def internal_error(self, component: str, *, once: bool = True) -> None:
        """Count an error of stallwatch's own and log it the first time; never raise."""
        self.errors.error(component, once=once)
