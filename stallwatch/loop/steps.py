"""The step accounting: how long each step of a request held the loop, and whose it was.

Two records share it. ``StepClock`` (the base of ``Timeline``) knows the step in progress;
``TimedAwait`` (the base of ``request.spans.RequestSpan``) is the request's side: its totals
and the timed await of its own coroutine. ``run_step`` is the one place where a step is timed
and charged, for the request's own coroutine and for every task it started.

This runs on every step of every request, so it exists twice: here in Python, the default and
the reference, and in ``stallwatch/_cstep.c``, compiled only when asked for at install
(``STALLWATCH_COMPILE=1``), field for field the same. ``IMPLEMENTATION`` says which one runs;
``STALLWATCH_PURE=1`` in the environment keeps the Python one where both are there. The core
tests run against both (``.ci/run``).

Loop thread only; the watchdog thread reads ``running`` and ``step_began``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from .stretch import SpanBook

__all__ = ["IMPLEMENTATION", "StepClock", "TimedAwait"]


class PyStepClock:
    """The step in progress on one loop, and ``run_step``, which times and charges each."""

    __slots__ = (
        "clock",
        "current",
        "late_busy",
        "nested",
        "ran",
        "running",
        "step_began",
        "stretch_id",
    )

    nested: float
    """Seconds of timed steps inside the step in progress (``run_step`` keeps it)."""
    step_began: float
    """When the innermost timed step in progress began (``run_step`` keeps it, and gives the
    outer step's back when a nested one ends)."""
    stretch_id: int
    """The busy stretch in progress (its owner, the timeline, counts them)."""
    running: SpanBook | None
    """The request whose timed step runs now, None when no timed step does (the server's own
    work, callbacks): ``run_step`` keeps it, the watchdog's profile reads it."""
    current: Callable[[], SpanBook | None]
    """Who pays for a step ``run_step`` is not told the payer of: the request whose context
    the step ran in (the monitor passes ``request.tasks.CURRENT.get``)."""
    ran: list[SpanBook]
    """Spans that ran in the stretch in progress (the timeline's holders' list, kept here for
    the steps' hot path)."""
    late_busy: dict[str, float]
    """Loop seconds of tasks whose request has ended, by route, until the next flush."""
    clock: Callable[[], float]
    """``time.perf_counter``, or a test's clock."""

    def run_step(self, span: SpanBook | None, step: Callable[..., Any], *args: Any) -> Any:
        """Run one step of a request's code (its own coroutine, or a task it started) and
        charge the loop time it held to ``span`` (None: whoever ``current`` says after the
        step, as a pipelined request takes over the task the previous one started).

        A step that runs inside another timed step (an eager task's first step runs inside
        ``create_task``) is taken out of the outer one, so no second is counted twice. This
        runs on every step of every request: the accounting is written out here, not called.
        """
        clock = self.clock
        outer = self.nested
        outer_running = self.running
        outer_began = self.step_began
        self.running = span if span is not None else self.current()
        self.nested = 0.0
        began = self.step_began = clock()
        try:
            return step(*args)
        finally:
            elapsed = clock() - began
            seconds = elapsed - self.nested  # less the timed steps inside this one
            self.nested = outer + elapsed
            self.running = outer_running
            self.step_began = outer_began  # the outer step's, where it resumes
            if span is None:
                span = self.current()
            if span is not None:
                span.busy += seconds
                if seconds > span.longest:
                    span.longest = seconds
                sid = self.stretch_id
                if span.stretch_id == sid:
                    span.stretch_time += seconds
                    if span.folded:
                        self.ran.append(span)  # folded already: fold the new part too
                else:
                    span.stretch_id = sid
                    span.stretch_time = seconds
                    span.folded = 0.0
                    self.ran.append(span)
                if span.done:  # a task that outlived its request: its route still pays
                    route = span.route_label()
                    self.late_busy[route] = self.late_busy.get(route, 0.0) + seconds

    def in_step(self, now: float) -> float:
        """Seconds the timed step in progress has held the loop by ``now``, less its nested
        steps (charged on their own): not charged yet to a step that reads it (a send)."""
        return max(0.0, now - self.step_began - self.nested)


def _released(*args: Any) -> Any:
    raise RuntimeError("this request has ended")


class PyTimedAwait:
    """A request's loop time, and the timed await of its own coroutine.

    It stands where the middleware awaits the app, so ``inspect`` and asyncio never see it
    as a task's coroutine; for whoever walks the chain of awaits (a debugger, 3.14's
    ``asyncio.capture_call_graph``) it answers with the app coroutine's frame and await.
    """

    __slots__ = (
        "_coro",
        "_step",
        "busy",
        "done",
        "folded",
        "longest",
        "stretch_id",
        "stretch_time",
        "timeline",
    )

    timeline: PyStepClock
    busy: float
    longest: float
    stretch_id: int
    stretch_time: float
    folded: float
    done: bool

    def wrap(self, awaitable: Any) -> Any:
        """Time the steps of ``awaitable`` (the app's coroutine); returns self, to await."""
        coro = self._coro = awaitable if type(awaitable) is CoroutineType else awaitable.__await__()
        self._step = coro.send
        return self

    def drop_coro(self) -> None:
        """Let go of the app's coroutine: the request has ended."""
        self._coro = self._step = _released

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def __iter__(self) -> PyTimedAwait:
        return self

    def send(self, value: Any = None) -> Any:
        return self.timeline.run_step(self, self._step, value)  # type: ignore[arg-type]

    __next__ = send

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self.timeline.run_step(self, self._coro.throw, typ)  # type: ignore[arg-type]
        # pre-3.12 callers only
        return self.timeline.run_step(self, self._coro.throw, typ, val, tb)  # type: ignore[arg-type]  # pragma: no cover

    def close(self) -> None:
        self._coro.close()

    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self._coro, "cr_code", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coro, "cr_running", False))


def _pick() -> tuple[str, type[PyStepClock], type[PyTimedAwait]]:
    """The compiled pair where it was built and not refused, else the Python pair.

    Never on a free-threaded build running without the GIL: the compiled records rely on the
    GIL, and importing an extension that does not declare otherwise would turn the GIL back
    on for the whole process, which is the app's to decide.
    """
    if os.environ.get("STALLWATCH_PURE", "") not in ("", "0"):
        return "python", PyStepClock, PyTimedAwait
    gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if gil_enabled is not None and not gil_enabled():
        return "python", PyStepClock, PyTimedAwait
    try:
        from .. import _cstep  # type: ignore[attr-defined]
    except ImportError:
        return "python", PyStepClock, PyTimedAwait
    return "c", _cstep.StepClock, _cstep.TimedAwait


if TYPE_CHECKING:
    IMPLEMENTATION = "python"
    StepClock = PyStepClock
    TimedAwait = PyTimedAwait
else:
    IMPLEMENTATION, StepClock, TimedAwait = _pick()
