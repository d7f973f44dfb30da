"""``loop.steps``: each step timed once and charged to its request, in both implementations.

Every test runs against the Python implementation and, where it is built
(``STALLWATCH_COMPILE=1``), the compiled one: the two must agree field for field. In a run
that asked for the compiled one (``STALLWATCH_COMPILE=1`` in the environment, as ``.ci/run``
sets for it) its absence is a failure, not a skip. A fake clock drives the steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import tracemalloc
import types
from collections.abc import Callable, Generator
from typing import Any

import pytest

from stallwatch.loop import steps


def _compiled() -> Any:
    try:
        from stallwatch import _cstep  # type: ignore[attr-defined]
    except ImportError:
        if os.environ.get("STALLWATCH_COMPILE", "") not in ("", "0"):
            pytest.fail("STALLWATCH_COMPILE=1, but stallwatch._cstep is not built")
        pytest.skip("stallwatch._cstep is not built (STALLWATCH_COMPILE=1 builds it)")
    return _cstep


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Pair:
    """One implementation's two records, made as the timeline and a request make them."""

    def __init__(self, clock_base: type, await_base: type) -> None:
        self.clock = Clock()
        self.payer: Any = None

        class Timeline(clock_base):  # type: ignore[misc, valid-type]
            pass

        class Span(await_base):  # type: ignore[misc, valid-type]
            __slots__ = ("route",)

            def route_label(self) -> str:
                return self.route  # type: ignore[no-any-return]

        self.timeline = Timeline()
        tl = self.timeline
        tl.clock = self.clock
        tl.nested = 0.0
        tl.step_began = 0.0
        tl.stretch_id = 0
        tl.running = None
        tl.current = lambda: self.payer
        tl.ran = []
        tl.late_busy = {}
        self._span_type = Span

    def span(self, route: str) -> Any:
        span = self._span_type()
        span.timeline = self.timeline
        span.route = route
        span.busy = 0.0
        span.longest = 0.0
        span.stretch_id = -1
        span.stretch_time = 0.0
        span.folded = 0.0
        span.done = False
        return span

    def holds(self, seconds: float) -> Callable[[], None]:
        def step() -> None:
            self.clock.now += seconds

        return step


@pytest.fixture(params=["python", "c"])
def pair(request: pytest.FixtureRequest) -> Pair:
    if request.param == "python":
        return Pair(steps.PyStepClock, steps.PyTimedAwait)
    compiled = _compiled()
    return Pair(compiled.StepClock, compiled.TimedAwait)


def test_a_step_is_charged_to_its_request_and_its_stretch(pair: Pair) -> None:
    tl, a = pair.timeline, pair.span("/a")
    tl.run_step(a, pair.holds(0.002))
    tl.run_step(a, pair.holds(0.003))

    assert a.busy == pytest.approx(0.005)
    assert a.longest == pytest.approx(0.003)
    assert a.stretch_id == 0
    assert a.stretch_time == pytest.approx(0.005)
    assert tl.ran == [a]  # once: nothing of it was folded in between
    assert tl.running is None
    assert tl.nested == pytest.approx(0.005)  # the steps' total, for an outer step if any


def test_a_folded_request_stands_in_ran_again_and_a_new_stretch_starts_its_time_afresh(
    pair: Pair,
) -> None:
    tl, a = pair.timeline, pair.span("/a")
    tl.run_step(a, pair.holds(0.002))
    a.folded = a.stretch_time  # the holders took it in
    tl.run_step(a, pair.holds(0.001))
    assert tl.ran == [a, a]
    assert a.stretch_time == pytest.approx(0.003)

    tl.stretch_id = 1
    tl.ran = []
    tl.run_step(a, pair.holds(0.004))
    assert (a.stretch_id, a.folded, tl.ran) == (1, 0.0, [a])
    assert a.stretch_time == pytest.approx(0.004)
    assert a.busy == pytest.approx(0.007)


def test_a_nested_step_is_taken_out_of_the_outer_one_which_gets_its_start_back(
    pair: Pair,
) -> None:
    tl, clock = pair.timeline, pair.clock
    outer, inner = pair.span("/outer"), pair.span("/inner")
    seen: dict[str, Any] = {}

    def outer_step() -> str:
        began = tl.step_began
        clock.now += 0.002
        tl.run_step(inner, pair.holds(0.003))
        clock.now += 0.001
        seen["began"] = tl.step_began - began
        seen["in_step"] = tl.in_step(clock.now)
        seen["running"] = tl.running
        return "done"

    assert tl.run_step(outer, outer_step) == "done"
    assert seen == {"began": 0.0, "in_step": pytest.approx(0.003), "running": outer}
    assert outer.busy == pytest.approx(0.003)
    assert inner.busy == pytest.approx(0.003)
    tl.step_began, tl.nested = clock.now, 0.0
    assert tl.in_step(clock.now - 1.0) == 0.0  # never negative


def test_a_step_told_no_payer_is_charged_to_whoever_current_says_after_it(pair: Pair) -> None:
    tl, a, b = pair.timeline, pair.span("/a"), pair.span("/b")
    pair.payer = a

    def handed_over() -> None:
        pair.clock.now += 0.002
        pair.payer = b  # a pipelined request took the task over

    tl.run_step(None, handed_over)
    assert (a.busy, b.busy) == (0.0, pytest.approx(0.002))
    pair.payer = None
    tl.run_step(None, pair.holds(0.001))  # nobody's: charged to no one
    assert b.busy == pytest.approx(0.002)


def test_a_step_after_its_request_ended_still_costs_its_route(pair: Pair) -> None:
    tl, a = pair.timeline, pair.span("/a")
    a.done = True
    tl.run_step(a, pair.holds(0.002))
    tl.run_step(a, pair.holds(0.001))
    assert tl.late_busy == {"/a": pytest.approx(0.003)}


def test_a_step_that_raises_is_charged_and_the_exception_goes_on_unchanged(pair: Pair) -> None:
    tl, a = pair.timeline, pair.span("/a")
    error = KeyError("boom")

    def fails() -> None:
        pair.clock.now += 0.002
        raise error

    with pytest.raises(KeyError) as raised:
        tl.run_step(a, fails)
    assert raised.value is error
    assert a.busy == pytest.approx(0.002)
    assert (tl.running, tl.nested) == (None, pytest.approx(0.002))


def test_a_record_written_in_python_is_charged_the_same(pair: Pair) -> None:
    class Book:
        def __init__(self) -> None:
            self.busy = self.longest = self.stretch_time = self.folded = 0.0
            self.stretch_id = -1
            self.done = True

        def route_label(self) -> str:
            return "/book"

    tl, book = pair.timeline, Book()
    tl.run_step(book, pair.holds(0.002))
    assert (book.busy, book.longest, book.stretch_time) == (pytest.approx(0.002),) * 3
    assert (book.stretch_id, tl.ran, tl.late_busy) == (0, [book], {"/book": pytest.approx(0.002)})


# -- the timed await --------------------------------------------------------------------------


@types.coroutine
def _pause() -> Generator[None, None, None]:
    yield


async def _app(clock: Clock, result: object) -> object:
    clock.now += 0.001
    await _pause()
    clock.now += 0.002
    return result


@pytest.mark.parametrize("result", [None, 42, (1, 2)])
def test_awaiting_the_app_through_the_span_times_each_of_its_steps(
    pair: Pair, result: object
) -> None:
    a = pair.span("/a")

    async def server() -> object:
        return await a.wrap(_app(pair.clock, result))

    assert asyncio.run(server()) == result  # a tuple comes back whole
    assert a.busy == pytest.approx(0.003)
    assert a.longest == pytest.approx(0.002)


def test_the_span_is_driven_as_a_coroutine_is(pair: Pair) -> None:
    a = pair.span("/a")
    coro = _app(pair.clock, "r")
    span = a.wrap(coro)
    assert span is a
    assert a.cr_code is coro.cr_code
    assert a.cr_frame is coro.cr_frame
    assert a.cr_running is False
    assert a.send(None) is None  # the app's first suspension
    with pytest.raises(StopIteration) as stopped:
        a.send(None)
    assert stopped.value.value == "r"
    assert a.busy == pytest.approx(0.003)

    b = pair.span("/b").wrap(_app(pair.clock, "r"))
    b.send(None)
    with pytest.raises(ValueError, match="thrown"):
        b.throw(ValueError("thrown"))
    assert b.busy == pytest.approx(0.001)

    c = pair.span("/c").wrap(_app(pair.clock, "r"))
    c.send(None)
    c.close()
    assert c.cr_frame is None  # closed

    app = _app(pair.clock, "r")
    d = pair.span("/d").wrap(app)
    d.drop_coro()
    with pytest.raises(RuntimeError, match="this request has ended"):
        d.send(None)
    app.close()


def test_pure_python_is_kept_where_it_is_asked_for() -> None:
    code = "from stallwatch.loop import steps; print(steps.IMPLEMENTATION)"
    env = {**os.environ, "STALLWATCH_PURE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "python"


@pytest.mark.parametrize("field", ["ran", "late_busy", "clock", "stretch_id"])
def test_a_timeline_without_one_of_its_fields_raises_and_never_crashes(
    pair: Pair, field: str
) -> None:
    tl, a = pair.timeline, pair.span("/a")
    a.done = True  # so that every field is read
    delattr(tl, field)
    with pytest.raises(AttributeError):
        tl.run_step(a, pair.holds(0.001))


def test_the_steps_keep_nothing_once_their_records_are_gone(pair: Pair) -> None:
    """What the compiled twin counts references for by hand: every path, thousands of times,
    and the memory traced afterwards is what it was (one leaked float a round would be
    120 KB)."""
    tl = pair.timeline
    loop = asyncio.new_event_loop()

    def rounds(n: int) -> None:
        for i in range(n):
            a = pair.span("/a")
            tl.run_step(a, pair.holds(0.001))
            a.folded = a.stretch_time
            tl.run_step(a, pair.holds(0.001))
            pair.payer = a
            tl.run_step(None, pair.holds(0.001))
            a.done = True
            tl.run_step(a, pair.holds(0.001))
            with contextlib.suppress(ZeroDivisionError):
                tl.run_step(a, lambda: 1 / 0)
            b = pair.span("/b").wrap(_app(pair.clock, (1, 2)))
            b.send(None)
            with contextlib.suppress(StopIteration):
                b.send(None)
            c = pair.span("/c").wrap(_app(pair.clock, 5))
            next(c)
            with contextlib.suppress(ValueError):
                c.throw(ValueError("thrown"))
            d = pair.span("/d")
            assert loop.run_until_complete(_awaited(d, pair.clock)) == (3, 4)
            tl.ran.clear()
            tl.stretch_id = i
            pair.payer = None
        tl.late_busy.clear()

    try:
        rounds(200)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        rounds(5000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        loop.close()
    assert grown < 32_000


async def _awaited(span: Any, clock: Clock) -> object:
    return await span.wrap(_app(clock, (3, 4)))
