"""Where busy stretches begin and end, timed as exactly as each loop lets us.

- ``PollProbe``: the standard selector loop calls ``selector.select()`` once per iteration;
  wrapping that one method times every poll to the microsecond.
- ``HeartbeatProbe``: loops without a Python-visible selector (uvloop) are timed from the
  heartbeat. With libuv's idle-time metric (``uvloop_idle.py``) the busy time between two
  beats is exact; without it, a beat's lateness is all there is, and a stretch can be off
  by up to one heartbeat interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import Any

from .timeline import Timeline
from .uvloop_idle import IdleMeter


class PollProbe:
    name = "poll"

    def __init__(self, selector: Any, timeline: Timeline) -> None:
        self._selector = selector
        self._timeline = timeline
        self._installed = False

    @staticmethod
    def selector_of(loop: asyncio.AbstractEventLoop) -> Any:
        selector = getattr(loop, "_selector", None)
        if selector is None or not callable(getattr(selector, "select", None)):
            return None
        if "select" in getattr(selector, "__dict__", {}):
            return None  # someone else wraps it already; do not stack on top
        return selector

    def install(self) -> None:
        original: Callable[[float | None], Any] = self._selector.select
        timeline = self._timeline
        floor = timeline.floor

        def select(timeout: float | None = None) -> Any:
            now = perf_counter()
            timeline.busy_since = None
            busy = now - timeline.stretch_start
            if busy >= floor or timeline.ran:
                timeline.close(now, busy)
            else:  # the common, short stretch: the same bookkeeping, inlined
                timeline.prev_seq = timeline.seq
                timeline.prev_stretch_start = timeline.stretch_start
                timeline.stretch_id += 1
            try:
                return original(timeout)
            finally:
                timeline.stretch_start = timeline.busy_since = perf_counter()

        self._selector.select = select
        self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            self._installed = False
            self._selector.__dict__.pop("select", None)


class HeartbeatProbe:
    def __init__(self, loop: asyncio.AbstractEventLoop, timeline: Timeline) -> None:
        self._timeline = timeline
        self._idle = IdleMeter.attach(loop)
        self.name = "heartbeat+uv-idle" if self._idle is not None else "heartbeat"
        self._last = perf_counter()
        self._last_idle = self._idle.seconds() if self._idle is not None else 0.0

    def beat(self, now: float, lateness: float) -> None:
        """Called by the heartbeat: the window since the previous beat is one stretch."""
        window = now - self._last
        if self._idle is not None:
            idle = self._idle.seconds()
            busy = max(0.0, window - (idle - self._last_idle))
            self._last_idle = idle
        else:
            busy = max(0.0, lateness)
        self._last = now
        timeline = self._timeline
        timeline.close(now, busy)
        timeline.open(now)

    def uninstall(self) -> None:
        if self._idle is not None:
            self._idle.detach()
