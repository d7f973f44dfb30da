"""``Timeline``: busy stretches, who held the loop in each, and what that cost the others.

Pure logic, no real time: a fake clock drives the timeline and the request spans, and the
tests play the probe's part (``about_to_poll``, then ``poll_returned``), as ``PollProbe`` does
on the standard loop.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Coroutine, Generator, Iterator
from typing import Any

import pytest

import stallwatch.loop.timeline
from stallwatch.events import BACKGROUND
from stallwatch.loop.timeline import Stretch, Timeline
from stallwatch.request.spans import RequestSpan

FLOOR = 0.001
THRESHOLD = 0.020


class Clock:
    """A ``perf_counter`` that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@types.coroutine
def _pause() -> Generator[None, None, None]:
    yield


async def _handler(clock: Clock, steps: tuple[float, ...]) -> None:
    """A request handler whose n-th step holds the loop for ``steps[n]`` seconds."""
    for seconds in steps:
        clock.now += seconds
        await _pause()


class Loop:
    """The probe's side of the timeline, on a fake clock: stretches end where the loop polls."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.stalls: list[Stretch] = []
        self.spans: list[RequestSpan] = []
        self.timeline = Timeline(
            floor=FLOOR,
            threshold=THRESHOLD,
            on_stall=self.stalls.append,
            clock=clock,
        )
        self.timeline.timed_by(exact=True, origin_previous=True)

    def poll(self, *, background: float = 0.0, idle: float = 0.001) -> None:
        """End the stretch in progress (after ``background`` seconds of other work), poll."""
        timeline = self.timeline
        self.clock.now += background
        timeline.about_to_poll(self.clock.now)
        self.clock.now += idle
        timeline.poll_returned(self.clock.now)

    def request(self, route: str, *steps: float) -> RequestSpan:
        """A request in flight, as the middleware registers it; its steps run on ``step``."""
        scope = {"type": "http", "method": "GET", "path": route}
        span = RequestSpan(self.timeline, scope, _no_send, _by_path)
        coro: Coroutine[Any, Any, None] = _handler(self.clock, steps)
        span.wrap(coro)
        self.timeline.request_started(span)
        self.spans.append(span)
        return span

    def step(self, span: RequestSpan) -> None:
        with contextlib.suppress(StopIteration):  # the handler's last step
            span.send(None)

    def finish(self, span: RequestSpan) -> dict[str, float] | None:
        self.timeline.request_ended(span, self.clock.now)
        return self.timeline.frozen(span, self.clock.now)

    def close(self) -> None:
        """Close the handlers, finished or not, as the server would on shutdown."""
        for span in self.spans:
            span.close()


async def _no_send(message: Any) -> None:
    raise AssertionError("the timeline never sends")


def _by_path(scope: Any) -> str:
    path: str = scope["path"]
    return path


@pytest.fixture
def make_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Loop]]:
    clock = Clock()
    monkeypatch.setattr(stallwatch.loop.timeline, "perf_counter", clock)
    made: list[Loop] = []

    def make() -> Loop:
        made.append(Loop(clock))
        return made[-1]

    yield make
    for loop in made:
        loop.close()


@pytest.fixture
def loop(make_loop: Callable[..., Loop]) -> Loop:
    return make_loop()


def test_a_stretch_under_the_floor_leaves_no_trace(loop: Loop) -> None:
    loop.poll(background=FLOOR / 2)
    timeline = loop.timeline
    assert timeline.totals == {}
    assert timeline.seq == 0
    assert timeline.stretch_id == 1  # but it was a stretch: requests can tell it from the next
    assert loop.stalls == []


def test_a_stretch_over_the_floor_is_charged_but_is_not_a_stall(loop: Loop) -> None:
    loop.poll(background=0.005)
    assert loop.timeline.totals == pytest.approx({BACKGROUND: 0.005})
    assert loop.timeline.seq == 1
    assert loop.stalls == []


def test_a_stretch_over_the_threshold_is_one_stall_with_its_exact_bounds(loop: Loop) -> None:
    loop.poll()
    began = loop.timeline.stretch_start
    loop.poll(background=0.025)
    (stall,) = loop.stalls
    assert stall.start == pytest.approx(began)
    assert stall.end == pytest.approx(began + 0.025)
    assert stall.duration == pytest.approx(0.025)
    assert stall.holders == pytest.approx({BACKGROUND: 0.025})
    assert stall.victims == {}


def test_the_request_that_ran_in_a_stall_holds_it_and_those_waiting_are_its_victims(
    loop: Loop,
) -> None:
    slow = loop.request("/slow", 0.025)
    waiting = loop.request("/waiting", 0.0001)
    loop.request("/waiting", 0.0001)
    loop.poll()
    loop.step(slow)
    loop.poll(background=0.005)

    (stall,) = loop.stalls
    assert stall.duration == pytest.approx(0.030)
    assert stall.holders == pytest.approx({"/slow": 0.025, BACKGROUND: 0.005})
    assert stall.victims == {"/waiting": 2}
    assert slow.own_long == pytest.approx(0.025)
    assert waiting.own_long == 0.0


def test_totals_keep_each_culprits_seconds_across_stretches(loop: Loop) -> None:
    a = loop.request("/a", 0.003, 0.004)
    loop.poll()
    loop.step(a)
    loop.poll(background=0.002)
    loop.step(a)
    loop.poll()
    loop.poll(background=FLOOR / 10)  # under the floor: neither charged nor counted
    assert loop.timeline.totals == pytest.approx({"/a": 0.007, BACKGROUND: 0.002})
    assert loop.timeline.seq == 2


def test_a_request_is_charged_for_what_others_held_during_its_life_never_for_itself(
    loop: Loop,
) -> None:
    loop.poll()
    mine = loop.request("/mine", 0.002, 0.001)
    loop.step(mine)
    loop.poll()
    other = loop.request("/other", 0.030)
    loop.step(other)
    loop.poll(background=0.004)
    loop.step(mine)
    loop.poll()

    assert loop.finish(mine) == pytest.approx({"/other": 0.030, BACKGROUND: 0.004})


def test_a_request_that_saw_only_short_stretches_was_not_frozen(loop: Loop) -> None:
    loop.poll()
    mine = loop.request("/mine", 0.0002, 0.0002)
    loop.step(mine)
    loop.poll(background=FLOOR / 4)
    loop.step(mine)
    loop.poll()
    assert loop.finish(mine) is None


def test_a_long_lived_request_is_charged_for_every_long_stretch_of_its_life(
    loop: Loop,
) -> None:
    loop.poll()
    mine = loop.request("/mine", 0.0001)
    loop.step(mine)
    loop.poll()
    for _ in range(5000):  # a websocket open while thousands of stretches go by
        loop.poll(background=0.002)

    frozen = loop.finish(mine)
    assert frozen is not None
    assert frozen[BACKGROUND] == pytest.approx(10.0)  # all of it, not the recent part


def test_the_totals_are_copied_only_for_requests_that_began_since_the_last_copy(
    loop: Loop,
) -> None:
    loop.poll()
    copies = set()
    for _ in range(100):  # long stretches with no request beginning: one dict, changed in place
        loop.poll(background=0.002)
        copies.add(id(loop.timeline.totals))
    assert len(copies) == 1
    held = loop.timeline.totals
    mine = loop.request("/mine", 0.0001)
    loop.poll(background=0.002)
    assert loop.timeline.totals is not held  # pinned by the request: the stretch added to a copy
    assert mine.base is held
    assert held[BACKGROUND] == pytest.approx(0.2)  # as it was when the request began


def test_a_request_that_ran_behind_the_stall_in_the_same_stretch_is_its_victim(
    loop: Loop,
) -> None:
    slow = loop.request("/slow", 0.025)
    quick = loop.request("/quick", 0.0001)
    loop.poll()
    loop.step(slow)
    loop.step(quick)  # its one step, after the slow one, in the same stretch: then it ends
    assert loop.finish(quick) == pytest.approx({"/slow": 0.025})
    loop.poll()

    (stall,) = loop.stalls
    assert stall.victims == {"/quick": 1}
    assert stall.frozen == pytest.approx({"/quick": 0.025})


def test_a_nested_step_gives_the_outer_step_its_start_back_and_is_not_its_unsent_time(
    loop: Loop,
) -> None:
    """A step timed inside another (an eager task's first step runs inside ``create_task``)
    is charged on its own; once it ends, the outer step is again the one in progress: the
    watchdog's profile reads when it began, and a send reads what it has not been charged."""
    timeline, clock = loop.timeline, loop.clock
    outer, inner = loop.request("/outer"), loop.request("/inner")
    seen: dict[str, float] = {}

    def inner_step() -> None:
        clock.now += 0.003

    def outer_step() -> None:
        began = timeline.step_began
        clock.now += 0.002
        timeline.run_step(inner, inner_step)
        clock.now += 0.001
        seen["began"], seen["in_step"] = timeline.step_began - began, timeline.in_step(clock.now)
        assert timeline.running is outer

    timeline.run_step(outer, outer_step)

    assert seen["began"] == 0.0  # the outer step's own start, not the nested one's
    assert seen["in_step"] == pytest.approx(0.003)  # 2 ms before and 1 ms after, not the 3 ms
    assert inner.busy == pytest.approx(0.003)
    assert outer.busy == pytest.approx(0.003)
