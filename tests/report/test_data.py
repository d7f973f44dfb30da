"""What the report shows: stalls grouped and ordered (``report_data``), and the loop's recent
history (``history.LoopHistory``), on plain values and an injected clock."""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

import pytest

from stallwatch.events import Frame, StackSample, StallEvent
from stallwatch.loop.history import LAG_EDGES, PENDING, LoopHistory
from stallwatch.report.data import (
    causes_view,
    frozen_table,
    location_of,
    loop_view,
    stalls_view,
    step_rates,
    summary,
)
from stallwatch.stall.location import LIBRARY_ONLY, NO_STACK

APP = Frame("/srv/app/cache.py", 147, "read_blocking")
OTHER = Frame("/srv/app/report.py", 12, "render")
CALLER = Frame("/srv/app/routes.py", 30, "get_cache")


def stall(
    started_at: float,
    duration: float,
    top: Frame | None = APP,
    *,
    cause: str = "blocking",
    culprit: str = "/cache/{key}",
    victims: dict[str, int] | None = None,
    sampled: bool = True,
    allowed: bool = False,
    samples: int = 4,
) -> StallEvent:
    stacks = (StackSample((CALLER, top), samples),) if top is not None else ()
    return StallEvent(
        started_at=started_at,
        duration=duration,
        cause=cause,  # type: ignore[arg-type]
        culprit=culprit,
        culprits={culprit: 1.0},
        victims=victims or {},
        top_frame=top,
        stacks=stacks,
        sampled=sampled,
        task=None,
        gc_seconds=0.0,
        loop_cpu_ratio=None,
        allowed=allowed,
    )


# -- stalls and their grouping ---------------------------------------------------------------


def test_stalls_are_listed_newest_first_with_their_location() -> None:
    events = [stall(100.0, 0.05), stall(102.0, 0.03, OTHER), stall(101.0, 0.2, None)]
    view = stalls_view(events)
    assert [s["started_at"] for s in view] == [102.0, 101.0, 100.0]
    assert view[0]["location"] == "/srv/app/report.py:12 in render"
    assert view[1]["location"] == LIBRARY_ONLY  # sampled, but only library frames
    assert view[2]["ended_at"] == pytest.approx(100.05)
    assert view[0]["allowed"] is False
    assert view[0]["stacks"][0]["frames"][-1] == str(OTHER)
    json.dumps(view, allow_nan=False)  # JSON-ready as it is


def test_two_stalls_at_one_line_are_one_location_with_count_two() -> None:
    events = [
        stall(10.0, 0.040, victims={"/ping": 2}),
        stall(11.0, 0.300, OTHER, culprit="/report"),
        stall(12.0, 0.060, victims={"/ping": 1, "/items/{id}": 3}, cause="starvation"),
    ]
    first, second = summary(events)
    # Sorted by total seconds: one 300 ms stall outweighs two that add up to 100 ms.
    assert (first["location"], first["count"]) == (str(OTHER), 1)
    assert second["location"] == "/srv/app/cache.py:147 in read_blocking"
    assert (second["file"], second["line"], second["function"]) == APP_PARTS
    assert second["count"] == 2
    assert second["total_seconds"] == pytest.approx(0.100)
    assert second["max_seconds"] == pytest.approx(0.060)
    assert second["mean_seconds"] == pytest.approx(0.050)
    assert (second["first_seen"], second["last_seen"]) == (10.0, pytest.approx(12.06))
    assert second["causes"] == {"blocking": 1, "starvation": 1}
    assert second["culprits"] == {"/cache/{key}": 2}
    assert second["victims"] == {"/items/{id}": 3, "/ping": 3}
    # One stack seen in both stalls is one stack with their samples added up.
    assert second["stacks"] == [{"count": 8, "frames": [str(CALLER), str(APP)]}]


APP_PARTS = ("/srv/app/cache.py", 147, "read_blocking")


def test_stalls_without_a_user_frame_get_a_label_of_their_own() -> None:
    events = [
        stall(1.0, 0.05, None, sampled=False, cause="gil"),
        stall(2.0, 0.05, None, sampled=True),
        stall(3.0, 0.05, None, sampled=False, cause="gil"),
    ]
    assert location_of(events[0]) == NO_STACK
    assert location_of(events[1]) == LIBRARY_ONLY
    groups = {g["location"]: g for g in summary(events)}
    assert groups[NO_STACK]["count"] == 2
    assert groups[NO_STACK]["file"] is None
    assert groups[NO_STACK]["stacks"] == []
    assert groups[LIBRARY_ONLY]["count"] == 1


def test_allowed_stalls_are_grouped_apart_and_listed_last() -> None:
    events = [
        stall(1.0, 0.9, allowed=True),
        stall(2.0, 0.05),
        stall(3.0, 0.02, OTHER),
        stall(4.0, 0.5, allowed=True),
    ]
    groups = summary(events)
    assert [(g["location"], g["allowed"], g["count"]) for g in groups] == [
        (str(APP), False, 1),
        (str(OTHER), False, 1),
        (str(APP), True, 2),  # the same line, but never mixed with its unexpected stalls
    ]
    # Causes count what is not allowed: the accepted 1.4 s are not an offender's.
    assert causes_view(events) == [
        {"cause": "blocking", "count": 2, "total_seconds": pytest.approx(0.07)}
    ]


def test_ties_are_ordered_by_name_so_refreshes_do_not_reshuffle() -> None:
    events = [stall(1.0, 0.05, OTHER), stall(2.0, 0.05, APP)]
    assert [g["location"] for g in summary(events)] == [str(APP), str(OTHER)]
    assert [g["location"] for g in summary(list(reversed(events)))] == [str(APP), str(OTHER)]
    assert summary([]) == []
    assert stalls_view([]) == []


# -- the loop's history ----------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def history(clock: Clock, **options: Any) -> LoopHistory:
    return LoopHistory(clock=clock, wall=lambda: clock.now + 1.7e9, **options)


def test_percentiles_read_the_bin_edge_and_never_exceed_the_largest_lag() -> None:
    clock = Clock()
    h = history(clock)
    for _ in range(990):
        h.beat(0.0002)
    for _ in range(10):
        h.beat(0.040)
    clock.now += 5.0
    snap = h.snapshot(60)
    lag = snap["lag"]
    assert snap["beats"] == 1000
    assert 0.0002 <= lag["p50"] <= 0.0002 * 2**0.25  # within one bin (19 %) above
    assert lag["p90"] == lag["p50"]
    assert 0.040 <= lag["p99.9"] <= 0.040 * 1.0001  # capped by the largest lag seen
    assert lag["max"] == 0.040
    assert lag["p99"] == lag["p50"]  # 1 % of beats at 40 ms is exactly the p99's rank
    json.dumps(snap, allow_nan=False)


def test_the_series_has_one_point_per_second_and_gaps_where_no_beat_ran() -> None:
    clock = Clock(1000.0)
    h = history(clock)
    for second in range(5):
        if second == 2:
            continue  # the loop was held for that whole second: no beat ran
        clock.now = 1000.0 + second + 0.5
        for _ in range(100):
            h.beat(0.001 * (second + 1))
    snap = h.snapshot(5)
    series = snap["series"]
    assert len(series) == 5
    assert [p["beats"] for p in series] == [100, 100, 0, 100, 100]
    assert [p.get("max") for p in series] == [0.001, 0.002, None, 0.004, 0.005]
    assert series[1]["t"] - series[0]["t"] == pytest.approx(1.0)
    assert series[-1]["t"] == pytest.approx(1004.0 + 1.7e9)


def test_route_shares_and_frozen_time_cover_the_window_only() -> None:
    clock = Clock(0.0)
    h = history(clock, span=60.0)
    h.busy("/cache", 2.0)
    h.frozen("/ping", "/cache", 0.5)
    clock.now = 30.0
    h.busy("/cache", 1.0)
    h.busy("/ping", 0.3)
    h.frozen("/ping", "/cache", 0.25)
    h.frozen("/items", "<background>", 0.1)
    clock.now = 40.0
    recent = h.snapshot(20)  # seconds 21..40: the first calls are outside it
    assert recent["routes"] == [
        {"route": "/cache", "busy": 1.0, "share": pytest.approx(1.0 / 20)},
        {"route": "/ping", "busy": 0.3, "share": pytest.approx(0.3 / 20)},
    ]
    assert recent["frozen"] == [
        {"route": "/ping", "culprit": "/cache", "seconds": 0.25},
        {"route": "/items", "culprit": "<background>", "seconds": 0.1},
    ]
    whole = h.snapshot(60)
    assert whole["covered"] == pytest.approx(40.0)  # the history is younger than the window
    assert whole["routes"][0] == {"route": "/cache", "busy": 3.0, "share": pytest.approx(3 / 40)}
    assert whole["frozen"][0]["seconds"] == pytest.approx(0.75)


def test_step_rates_are_each_routes_loop_seconds_per_second_over_the_span_really_covered() -> None:
    clock = Clock(0.0)
    h = history(clock, span=60.0)
    h.busy("/cache", 2.0)
    clock.now = 30.0
    h.busy("/cache", 1.5)
    h.busy("/ping", 0.3)
    clock.now = 40.5
    # Buckets 21..40 (21.0 to 40.5): 19.5 s, not the 20 s of whole buckets ``covered`` says.
    rates = step_rates(h.snapshot(20))
    assert rates == {"/cache": pytest.approx(1.5 / 19.5), "/ping": pytest.approx(0.3 / 19.5)}
    # A history younger than the window: its age.
    assert step_rates(h.snapshot(60))["/cache"] == pytest.approx(3.5 / 40.5)
    assert step_rates(None) == {}
    assert step_rates(history(Clock(5.0)).snapshot(10)) == {}  # no route ran


def test_memory_is_a_fixed_ring_old_buckets_are_reused() -> None:
    clock = Clock(0.0)
    h = history(clock, span=10.0)
    h.beat(0.5)
    h.busy("/old", 1.0)
    clock.now = 25.0  # more than the whole ring later
    h.beat(0.001)
    snap = h.snapshot(300)  # asks for more than is kept: the span is all there is
    assert snap["window"] == 10.0
    assert len(snap["series"]) == 10
    assert snap["beats"] == 1
    assert snap["lag"]["max"] == 0.001
    assert snap["routes"] == []


def test_a_burst_of_missed_beats_longer_than_the_buffer_is_all_counted() -> None:
    clock = Clock(0.0)
    h = history(clock)
    for i in range(PENDING * 3 + 5):  # a long stall's missed beats, all at one moment
        h.beat(60.0 - i * 0.01)
    snap = h.snapshot(10)
    assert snap["beats"] == PENDING * 3 + 5
    assert snap["lag"]["max"] == 60.0
    assert snap["lag"]["p50"] >= 30.0


def test_lag_edges_span_ten_microseconds_to_minutes() -> None:
    assert LAG_EDGES[0] == pytest.approx(1e-5)
    assert LAG_EDGES[-1] > 100.0
    assert all(b / a == pytest.approx(2**0.25) for a, b in itertools.pairwise(LAG_EDGES))
    clock = Clock()
    h = history(clock)
    h.beat(0.0)
    h.beat(1e6)  # beyond the last edge: still counted, read back as the largest lag
    assert h.snapshot(10)["lag"]["max"] == 1e6
    assert h.snapshot(10)["lag"]["p50"] == 0.0


def test_snapshots_from_another_thread_see_every_beat_once() -> None:
    clock = Clock(0.0)
    h = history(clock)
    stop = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(h.snapshot(300)["beats"])

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(20_000):
        clock.now = i * 0.01  # 200 s of beats, a bucket change every hundred
        h.beat(0.001)
    stop.set()
    thread.join()
    assert seen == sorted(seen)  # never a beat counted twice, then dropped
    assert h.snapshot(300)["beats"] == 20_000


def test_history_options_are_checked() -> None:
    with pytest.raises(ValueError, match="bucket"):
        LoopHistory(bucket=0)
    with pytest.raises(ValueError, match="span"):
        LoopHistory(span=0.5)
    with pytest.raises(ValueError, match="window"):
        LoopHistory().snapshot(0)


# -- the loop view ---------------------------------------------------------------------------


def test_loop_view_adds_a_victim_by_culprit_table() -> None:
    clock = Clock()
    h = history(clock)
    h.beat(0.001)
    h.frozen("/ping", "/cache", 0.30)
    h.frozen("/ping", "<background>", 0.05)
    h.frozen("/items", "/cache", 0.10)
    view = loop_view(h.snapshot(60))
    assert view["available"] is True
    table = view["frozen_table"]
    assert table["culprits"] == ["/cache", "<background>"]
    assert table["rows"] == [
        {
            "route": "/ping",
            "total": pytest.approx(0.35),
            "by": {"/cache": 0.3, "<background>": 0.05},
        },
        {
            "route": "/items",
            "total": pytest.approx(0.10),
            "by": {"/cache": 0.1, "<background>": 0.0},
        },
    ]


def test_loop_view_without_history_has_the_same_shape() -> None:
    empty = loop_view(None)
    full = loop_view(history(Clock()).snapshot(60))
    assert empty["available"] is False
    assert set(empty) <= set(full)
    assert set(empty["lag"]) == set(full["lag"])
    assert frozen_table([]) == {"culprits": [], "rows": []}
