"""The stall warning on the ``stallwatch`` logger: one line a stall, rate-limited."""

from __future__ import annotations

import logging
from time import perf_counter

from ..events import StallEvent
from ..profile.hints import event_hint
from .location import location

logger = logging.getLogger("stallwatch")


class StallLog:
    """A token bucket: ``burst`` lines at once, refilled over ``every`` seconds; what it holds
    back is counted and said on the next line it lets through."""

    def __init__(self, *, every: float, burst: int) -> None:
        self._every = every
        self._burst = burst
        self._tokens = float(burst)
        self._at = perf_counter()
        self._suppressed = 0

    def log(self, event: StallEvent) -> None:
        now = perf_counter()
        self._tokens = min(
            float(self._burst), self._tokens + (now - self._at) * self._burst / self._every
        )
        self._at = now
        if self._tokens < 1.0:
            self._suppressed += 1
            return
        self._tokens -= 1.0
        suppressed, self._suppressed = self._suppressed, 0
        started = f" in a task started at {event.started_by}" if event.started_by else ""
        pools = getattr(event, "pool_threads", None)
        # Starved by what? The pool threads that ran meanwhile, when any did.
        cause: str = event.cause
        if cause == "starvation" and pools:
            cause = f"starvation, {pools:g} pool threads running"
        hint = event_hint(event)
        logger.warning(
            "event loop stalled for %.1f ms (%s%s) by %s at %s%s; victims in flight: %s%s%s",
            event.duration * 1e3,
            cause,
            ", allowed" if event.allowed else "",
            event.culprit,
            location(event, detail=True),
            started,
            ", ".join(f"{route} x{n}" for route, n in event.victims.items()) or "none",
            f"; fix: {hint}" if hint is not None else "",
            f" ({suppressed} earlier stalls not logged)" if suppressed else "",
        )
