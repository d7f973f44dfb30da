"""Where a stall goes once it has ended: its span started on the loop thread (with
OpenTelemetry), then, from the watchdog thread, kept among the last ``history`` events,
counted and timed by culprit and cause, and logged (rate-limited)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from ..events import StallEvent
from ..loop.stretch import Stretch
from ..metrics import Metrics
from .log import StallLog

if TYPE_CHECKING:
    from ..otel.stalls import LoopTelemetry


class StallRecord:
    """The monitor's stalls: the one owner of its recent events."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        history: int,
        log_every: float,
        log_burst: int,
        telemetry: LoopTelemetry | None,
        on_error: Callable[[str], None],
    ) -> None:
        self._metrics = metrics
        self._events: deque[StallEvent] = deque(maxlen=history)
        self._log = StallLog(every=log_every, burst=log_burst)
        self._telemetry = telemetry
        self._on_error = on_error

    def recent(self) -> list[StallEvent]:
        """The last stall events, oldest first (any thread)."""
        return list(self._events)

    def stretch_ended(self, stretch: Stretch, stretch_id: int) -> Stretch:
        """A stall's stretch has ended (loop thread): with OpenTelemetry its span starts now,
        before any request it froze can end, so that each of them can link to it."""
        telemetry = self._telemetry
        if telemetry is None:
            return stretch
        try:
            return replace(stretch, trace=telemetry.stall_ended(stretch, stretch_id))
        except Exception:
            self._on_error("otel")
            return stretch

    def record(self, event: StallEvent) -> None:
        """Store, count and log one stall (watchdog thread)."""
        self._events.append(event)
        exemplar = None
        if self._telemetry is not None:
            try:
                exemplar = self._telemetry.stall_recorded(event)  # the culprit request's trace
            except Exception:
                self._on_error("otel")
        metrics = self._metrics
        metrics.stalls.labels(event.culprit, event.cause).inc()
        metrics.stall_seconds.labels(event.culprit, event.cause).observe(event.duration, exemplar)
        self._log.log(event)
