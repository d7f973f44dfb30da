"""``LoopMonitor``: the heartbeat, the probe, the task factory and the watchdog of one loop.

One monitor per loop. The heartbeat measures lag (what a newly ready callback waits); the
probe times busy stretches; the task factory hands the tasks a request starts to that
request; the watchdog thread samples the stack while the loop is held and reports each stall
once it ends. Everything the monitor does on the loop thread is a few clock reads per
iteration; the rest happens on the watchdog thread.

The monitor owns what outlives a start: its options, metrics, history, profile, error
counts, stall record (``stall/record.py``) and flushers, and it answers for them to the
middleware, the report and ``/livez``. What each start attaches to the loop (the probe, the
timeline, task attribution, the pools' hooks, the watchdog and the heartbeat) is an
``attachment.Attachment``, built by ``start`` and taken off by ``stop``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .attachment import Attachment, MonitorLinks
from .errors import InternalErrors
from .events import StallEvent
from .loop import registry
from .loop.history import LoopHistory
from .loop.timeline import Timeline
from .metrics import Metrics, metrics_for
from .options import MonitorOptions, monitor_options
from .pools import PoolMetrics, PoolWatch
from .profile import LoopProfile
from .stall.gcwatch import GC_WATCH
from .stall.record import StallRecord
from .stall.sampling import StackSampler

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
        self._attached: Attachment | None = None
        """What the last start attached to the loop; kept after stop, for its readers."""
        self._flushers: list[Callable[[], None]] = []

    # -- public ----------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the monitor has no loop until it is started")
        return self._loop

    @property
    def timeline(self) -> Timeline:
        if self._attached is None:
            raise RuntimeError("the monitor is not started")
        return self._attached.timeline

    @property
    def running(self) -> bool:
        return self._started

    @property
    def probe(self) -> str:
        """How stretches are timed: ``poll`` (asyncio) and ``uv-prepare`` (uvloop) are exact;
        ``heartbeat+uv-idle`` and ``heartbeat`` are the fallbacks."""
        return self._attached.probe.name if self._attached is not None else "none"

    @property
    def sampler(self) -> StackSampler | None:
        """The loop thread's stack reader (``/livez`` names the line holding the loop)."""
        return self._attached.sampler if self._attached is not None else None

    @property
    def pools(self) -> PoolWatch | None:
        """The default executor and anyio's limiter of this loop, while watched."""
        return self._attached.pools if self._attached is not None else None

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
        attached = self._attached
        return attached.watchdog.settle(timeout) if attached is not None else True

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
        previous, metrics = self._attached, self.metrics
        attached = self._attached = Attachment(
            loop,
            MonitorLinks(
                stalls=self._stalls,
                pool_metrics=PoolMetrics(
                    *self._pool_histograms(), metrics.executor_threads, metrics.executor_waiting
                ),
                observe_lag=self._observe_lag,
                show_stall=metrics.stall_in_progress.set,
                flush=self.flush,
                stop=self.stop,
                error=self.internal_error,
            ),
            floor=self.floor,
            threshold=self.stall_threshold,
            interval=self.interval,
            sample_interval=self.sample_interval,
            in_app_include=self.options.in_app_include,
            profile=self.profile,
        )
        if previous is not None and previous.profiler is not None:
            self.remove_flusher(previous.profiler.name_pending)  # a previous run's
        if attached.profiler is not None:
            self.add_flusher(attached.profiler.name_pending)
        GC_WATCH.acquire()
        self._started = True
        attached.start()
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
        if self._attached is not None:
            self._attached.watchdog.stop()
        GC_WATCH.release()

    def _detach(self) -> None:
        if self._attached is not None:
            self._attached.detach()

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

    def recent_lag(self) -> float:
        """How late a callback due now would run (any thread; shedding and ``/livez``)."""
        attached = self._attached
        return attached.heartbeat.recent_lag() if attached is not None else 0.0

    def held_since(self) -> float | None:
        """When the loop last stopped polling, if it is busy now (watchdog thread)."""
        attached = self._attached
        return attached.held_since() if attached is not None else None

    # -- what the attachment is given --------------------------------------------------------

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

    def internal_error(self, component: str, *, once: bool = True) -> None:
        """Count an error of stallwatch's own and log it the first time; never raise."""
        self.errors.error(component, once=once)
