"""Where busy stretches begin and end, timed as exactly as each loop lets us.

- ``PollProbe``: the standard selector loop calls ``selector.select()`` once per iteration;
  wrapping that one method times every poll to the microsecond.
- ``PreparePollProbe``: uvloop has no Python-visible selector; a libuv prepare handle and
  libuv's idle-time metric, reached through ctypes (``libuv.py``), time it as exactly.
- ``HeartbeatProbe``: anything else is timed from the heartbeat. With libuv's idle-time
  metric the busy time between two beats is exact; without it, a beat's lateness is all
  there is, and a stretch can be off by up to one heartbeat interval.

Every probe has the same face (``Probe``) and ``choose_probe`` picks one, so the monitor
never asks which it got. A probe tells the timeline only through its named methods.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any, Protocol

from .libuv import LibUV, PrepareHandle
from .timeline import Timeline


class Probe(Protocol):
    name: str
    """``poll`` and ``uv-prepare`` are exact; ``heartbeat+uv-idle`` and ``heartbeat`` not."""

    def held_since(self) -> float | None:
        """When the loop last came back from polling, if it is busy now (watchdog thread)."""

    def beat(self, now: float, lateness: float) -> None:
        """The heartbeat ran (loop thread): the probes that time from it close a stretch."""

    def uninstall(self) -> None:
        """Undo what ``install`` did (loop thread)."""

    def tell_wakeups(self, on: bool) -> bool:
        """Have the timeline's ``woke`` hook called when a poll returns (loop thread); False
        where this probe cannot, and the heartbeat then never goes quiet."""


def choose_probe(
    loop: asyncio.AbstractEventLoop,
    timeline: Timeline,
    *,
    interval: float,
    on_error: Callable[[], None] = lambda: None,
) -> Probe:
    """The most exact probe this loop allows, installed and wired to ``timeline``; the
    heartbeat's ``interval`` bounds how far off the fallback can be. ``on_error`` counts an
    error inside a callback from libuv, which must never raise."""
    selector = PollProbe.selector_of(loop)
    if selector is not None:
        return PollProbe(selector, timeline)
    libuv = LibUV.attach(loop)
    if libuv is not None:
        prepare = PreparePollProbe(loop, timeline, libuv, on_error)
        if prepare.install():
            return prepare
    return HeartbeatProbe(timeline, libuv, interval)


class PollProbe:
    name = "poll"

    def __init__(self, selector: Any, timeline: Timeline) -> None:
        self._selector = selector
        self._timeline = timeline
        timeline.timed_by(exact=True, origin_previous=True)
        original: Callable[[float | None], Any] = selector.select
        about_to_poll = timeline.about_to_poll
        poll_returned = timeline.poll_returned

        def select(timeout: float | None = None) -> Any:
            about_to_poll(perf_counter())
            try:
                return original(timeout)
            finally:
                poll_returned(perf_counter())

        selector.select = select

    @staticmethod
    def selector_of(loop: asyncio.AbstractEventLoop) -> Any:
        selector = getattr(loop, "_selector", None)
        if selector is None or not callable(getattr(selector, "select", None)):
            return None
        if "select" in getattr(selector, "__dict__", {}):
            return None  # someone else wraps it already; do not stack on top
        return selector

    def held_since(self) -> float | None:
        return self._timeline.busy_since

    def beat(self, now: float, lateness: float) -> None:
        """Polls are timed where they happen: the heartbeat has nothing to add."""

    def tell_wakeups(self, on: bool) -> bool:
        return True  # every poll's return reaches the timeline already

    def uninstall(self) -> None:
        self._selector.__dict__.pop("select", None)


class PreparePollProbe:
    """uvloop: a libuv prepare handle marks each stretch's end (the loop is about to poll),
    and libuv's idle-time metric says how long the previous poll waited, hence where the
    stretch began. Both are exact; the callback costs about a microsecond per iteration.

    Under uvloop a request's task is created by an I/O callback right after the poll and
    first runs later in the same iteration, so its life starts with the current stretch.
    """

    name = "uv-prepare"

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeline: Timeline,
        libuv: LibUV,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._loop = loop
        self._on_error = on_error
        self._timeline = timeline
        self._libuv = libuv
        self._last = (perf_counter(), libuv.idle_seconds())
        self._handle: PrepareHandle | None = None
        self._check: PrepareHandle | None = None
        # Closing the loop frees what idle_seconds() reads, and the watchdog reads it without
        # the GIL (ctypes lets it go): the two must not overlap.
        self._closing = threading.Lock()

    def install(self) -> bool:
        handle = self._libuv.prepare(self._about_to_poll)
        if handle is None:
            return False
        self._handle = handle
        self._timeline.timed_by(exact=True, origin_previous=False, lazy_start=self.stretch_start)
        # uvloop refuses to close with a handle it does not know still open: close ours first.
        original_close = self._loop.close

        def close() -> None:
            with self._closing:
                self.uninstall()
                original_close()

        self._loop.close = close  # type: ignore[method-assign]
        return True

    def stretch_start(self) -> float:
        """When the loop last came back from polling (loop thread, outside the poll)."""
        at, idle = self._last
        return at + (self._libuv.idle_seconds() - idle)

    def held_since(self) -> float | None:
        # From the watchdog thread: libuv counts a poll in progress as idle, so while the
        # loop polls this is about now, and while it is held it stays put.
        with self._closing:
            if self._handle is None:
                return None  # uninstalled, or the loop is closed: nothing to read any more
            return self.stretch_start()

    def beat(self, now: float, lateness: float) -> None:
        """Polls are timed where they happen: the heartbeat has nothing to add."""

    def tell_wakeups(self, on: bool) -> bool:
        # A check handle runs after every poll: about a microsecond an iteration, so it runs
        # only while the loop is quiet (the heartbeat asks), never under load.
        if on and self._check is None and self._handle is not None:
            self._check = self._libuv.check(self._poll_returned)
            if self._check is None:
                return False
            # This stretch is in progress: from now on the timeline knows when polls return.
            self._timeline.poll_returned(self.stretch_start())
            return True
        if not on and self._check is not None:
            self._check.close()
            self._check = None
        return True

    def _poll_returned(self) -> None:
        try:
            self._timeline.poll_returned(perf_counter())
        except Exception:  # a callback from C must never raise
            self._on_error()

    def _about_to_poll(self) -> None:
        try:
            now = perf_counter()
            idle = self._libuv.idle_seconds()
            at, last_idle = self._last
            self._last = (now, idle)
            self._timeline.about_to_poll(now, start=at + (idle - last_idle))
        except Exception:  # a callback from C must never raise
            self._on_error()

    def uninstall(self) -> None:
        self.tell_wakeups(False)
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._timeline.timed_by(exact=True, origin_previous=False)
            self._loop.__dict__.pop("close", None)


class HeartbeatProbe:
    def __init__(self, timeline: Timeline, libuv: LibUV | None, interval: float = 0.010) -> None:
        self._timeline = timeline
        self._libuv = libuv
        self.name = "heartbeat+uv-idle" if libuv is not None else "heartbeat"
        self._last = perf_counter()
        self._last_idle = libuv.idle_seconds() if libuv is not None else 0.0
        self.last_beat = self._last
        self.interval = interval
        timeline.timed_by(exact=False, origin_previous=False)

    def held_since(self) -> float | None:
        # A beat is due every interval: a loop that has not run it since is held.
        return self.last_beat + self.interval

    def beat(self, now: float, lateness: float) -> None:
        """The window since the previous beat is one stretch."""
        window = now - self._last
        if self._libuv is not None:
            idle = self._libuv.idle_seconds()
            busy = max(0.0, window - (idle - self._last_idle))
            self._last_idle = idle
        else:
            busy = max(0.0, lateness)
        self._last = self.last_beat = now
        timeline = self._timeline
        timeline.about_to_poll(now, start=now - busy)
        timeline.poll_returned(now)

    def tell_wakeups(self, on: bool) -> bool:
        return not on  # stretches come from the heartbeat itself: it must never go quiet

    def uninstall(self) -> None:
        """Nothing to undo: libuv has no call to switch its idle-time metric off."""
