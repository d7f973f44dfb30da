"""What a started ``LoopMonitor`` attaches to its loop, and takes off again at stop.

One ``Attachment`` per start: the timeline, the probe that feeds it, task attribution, the
pools' hooks, the profile's sampler, the watchdog thread, the heartbeat, and the hook that
stops the monitor as the loop closes, built in the order they read each other and wired
only to each other and to ``MonitorLinks``. It is built and taken off (``detach``) on the
loop thread; the watchdog thread reads it only through the links it was given.

The attachment owns these parts and the links between them (the heartbeat reads the
watchdog's ``stops_seen``, the watchdog the heartbeat's ``quiet``, the timeline hands the
watchdog each stall). What outlives a start (options, metrics, history, profile, the stall
record, the error counts, the flushers) is the monitor's, and reaches the attachment only
as ``MonitorLinks``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .loop.heartbeat import Heartbeat, HeartbeatLinks
from .loop.probes import Probe, choose_probe
from .loop.timeline import Stretch, Timeline
from .pools import PoolMetrics, PoolWatch
from .profile import LoopProfile, ProfileSampler
from .request.tasks import CURRENT, TaskAttribution
from .stall.record import StallRecord
from .stall.sampling import StackSampler, frames_of
from .stall.watchdog import Watchdog, WatchdogLinks


@dataclass(frozen=True, slots=True)
class MonitorLinks:
    """What an attachment is given of its monitor."""

    stalls: StallRecord
    """Where each stall goes: its stretch as it ends (loop thread), its event (watchdog)."""
    pool_metrics: PoolMetrics
    observe_lag: Callable[[float], None]
    """One beat's lag, wherever lag goes."""
    show_stall: Callable[[float], None]
    """Sets the stall-in-progress gauge."""
    flush: Callable[[], None]
    """The monitor's flushers: about ten times a second, and before the parts come off."""
    stop: Callable[[], None]
    """The monitor's stop (the loop was closed under it)."""
    error: Callable[[str], None]
    """Counts and logs one error of a part's own, by component; never raises."""


class Attachment:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        links: MonitorLinks,
        *,
        floor: float,
        threshold: float,
        interval: float,
        sample_interval: float,
        in_app_include: tuple[str, ...],
        profile: LoopProfile | None,
    ) -> None:
        self.loop = loop
        self._links = links
        error = links.error
        self.sampler = sampler = StackSampler(threading.get_ident(), in_app_include=in_app_include)
        """The loop thread's stack reader (``/livez`` names the line holding the loop)."""
        self.timeline = timeline = Timeline(
            floor=floor,
            threshold=threshold,
            on_stall=self._stall_ended,
            current=CURRENT.get,
        )
        self.probe: Probe = choose_probe(
            loop, timeline, interval=interval, on_error=lambda: error("probe")
        )
        self.tasks = tasks = TaskAttribution(
            loop, timeline, sampler.started_by, lambda: error("tasks")
        )
        tasks.install()
        self.pools = pools = PoolWatch(loop, links.pool_metrics, lambda: error("pools"))
        pools.install()
        self.profiler: ProfileSampler | None = None
        if profile is not None:
            self.profiler = ProfileSampler(profile, frames=frames_of, top_frame=sampler.top_frame)
        heartbeat: Heartbeat | None = None  # made below, once the watchdog it reads exists
        self.watchdog = watchdog = Watchdog(
            WatchdogLinks(
                loop=loop,
                held_since=self.held_since,
                started_by=lambda: tasks.origin,
                record=links.stalls.record,
                on_error=lambda: error("watchdog"),
                show_stall=links.show_stall,
                loop_closed=links.stop,
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
            threshold=threshold,
            sample_interval=sample_interval,
            profiler=self.profiler,
        )
        self._closer = self._stop_on_close()
        self.heartbeat = heartbeat = Heartbeat(
            loop,
            timeline,
            self.probe,
            HeartbeatLinks(
                observe=links.observe_lag,
                stops_seen=lambda: watchdog.stops_seen,
                every_tenth=self._every_tenth,
                on_error=lambda: error("heartbeat"),
            ),
            interval=interval,
        )

    def start(self) -> None:
        """Start the heartbeat's timer and the watchdog thread."""
        self.heartbeat.start()
        self.watchdog.start()

    def held_since(self) -> float | None:
        """When the loop last stopped polling, if it is busy now (watchdog thread)."""
        if not self.loop.is_running():
            return None  # a stopped loop is not a stalled one
        return self.probe.held_since()

    def _stop_on_close(self) -> Callable[[], None] | None:
        """Stop the monitor, and join the watchdog, as the loop closes (``asyncio.run``
        closes it): no thread of ours outlives the loop, whoever counts the threads after."""
        loop = self.loop
        if getattr(loop, "__dict__", None) is None:
            return None  # a loop class with __slots__: the watchdog stops at its next look
        original = loop.close
        stop = self._links.stop

        def close() -> None:
            stop()
            original()

        loop.close = close  # type: ignore[method-assign]
        return close

    def detach(self) -> None:
        """Take every part off the loop (loop thread), after a last flush."""
        loop = self.loop
        if getattr(loop, "__dict__", {}).get("close") is self._closer:
            del loop.close  # a close set after ours stays, and calls ours, which calls stop
        try:
            self._links.flush()  # counts not yet handed to prometheus-client would be lost
        except Exception:
            self._links.error("middleware")
        self.heartbeat.stop()
        self.probe.uninstall()
        self.tasks.uninstall()
        self.pools.uninstall()

    def _park(self, alarm: Callable[[], None] | None) -> None:
        self.timeline.on_wake = alarm

    def _every_tenth(self) -> None:
        self.tasks.keep_installed()
        self._links.flush()

    def _stall_ended(self, stretch: Stretch) -> None:
        # The loop thread hands the stretch over; the watchdog turns it into an event.
        self.watchdog.stall_ended(
            self._links.stalls.stretch_ended(stretch, self.timeline.stretch_id)
        )
