"""A long run of mixed, messy traffic: stallwatch's memory stays flat and its labels bounded.

100,000 requests go straight through ASGI (no sockets: the subject is what stallwatch keeps,
not timing) into a Starlette app with thirteen route templates, 50 at a time on one loop:
paths no route matches (each one new), odd and unknown methods, any status code from 200 to
599, app errors, streams, streams the client leaves halfway, work in ``gather`` and task
groups. After a warm-up, ``tracemalloc`` tracks every allocation made in stallwatch's own
files; what is still alive at each checkpoint must not grow. The label sets must stay those
of the app (its templates, ``<unmatched>``, the known methods and ``OTHER``), and no internal
error may be counted.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import stallwatch
from stallwatch import StallwatchMiddleware, monitor
from stallwatch.profile import LoopProfile
from tests.apps import proof_routes

REQUESTS = int(os.environ.get("STALLWATCH_SOAK_REQUESTS", "100000"))
WARM_UP = REQUESTS // 5
CHECK_EVERY = REQUESTS // 5
CONCURRENCY = 50
GROWTH_LIMIT = 768 * 1024
"""Bytes stallwatch may hold at a checkpoint beyond what it held at the first one: room for
its bounded buffers, which rise and fall with the traffic of the moment (the last 512 gc
pauses, the requests and tasks in flight, a dict that resizes) and, the largest, the
profile's cache of located stacks (``profile.sampler.LOCATED``: 128 stacks, about 0.5 MB
when full of this soak's deep and varied ones, then it starts over; a checkpoint can find it
empty and the next full). Far below what a leak of one object per request leaves (80,000
requests x 56 bytes at the least: 4.5 MB)."""

PACKAGE = str(Path(stallwatch.__file__).resolve().parent)


RINGS = [tracemalloc.Filter(False, PACKAGE + "/loop/history.py")]
"""The one fixed-capacity ring that fills with time, not with requests, left out of the growth
check: the report's loop history (the last 300 s in one-second buckets) holds more each
second until it has run for 300 s. A soak of a minute cannot tell its filling from a leak;
tests/loop/test_history.py runs its clock past the window instead. Everything else stallwatch
allocates must be flat once warm (the timeline keeps no ring: the totals it copies live only
as long as the requests that pinned them)."""


class QuickProfile(LoopProfile):
    """The line profile with its ring turned over in two seconds, not five minutes.

    The profile is the other ring that fills with time: 10 s buckets over the history's
    300 s, and the loop is busy for the whole soak, so each new bucket fills with its own
    cells and stacks (each bucket bounded; a 74 s run in CI held 530 KB more by its third
    checkpoint than at its first). Turned over every 2 s, it is full before the warm-up
    ends and cycles dozens of times while memory is tracked: what must stay flat is then
    the profile full, recycling its buckets, and charging samples to requests. Its bound at
    the real span is tests/test_profile.py's ``test_memory_is_bounded_whatever_the_traffic``.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**{**options, "span": 2.0, "bucket": 0.1})


KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}


def held_by_stallwatch() -> int:
    """Bytes alive that were allocated by a line of stallwatch's own code.

    Garbage is collected first: a request the app failed leaves a reference cycle (its
    exception, traceback and frames), which holds that request's objects, ours among them,
    until the collector runs; in a large heap (the whole suite's, in CI) a full collection
    is rare, and that garbage would pass for a leak.
    """
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    mine = snapshot.filter_traces([tracemalloc.Filter(True, PACKAGE + "/*"), *RINGS])
    return sum(stat.size for stat in mine.statistics("filename"))


def label_sets(registry: CollectorRegistry) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Per metric family, its distinct label sets (histogram buckets not counted apart)."""
    found: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in registry.collect():
        if not family.name.startswith("stallwatch_"):
            continue
        sets = found.setdefault(family.name, set())
        for sample in family.samples:
            sets.add(tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le")))
    return found


def values(registry: CollectorRegistry, family: str, label: str) -> set[str]:
    return {dict(labels)[label] for labels in label_sets(registry).get(family, set())}


async def soak(
    app: Any,
    count: int,
    rng: random.Random,
    checkpoint: Callable[[int], None],
    codes: Sequence[int] = proof_routes.COMMON_CODES,
) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    done = 0
    while done < count:
        size = min(CONCURRENCY, count - done)
        batch = [proof_routes.random_request(rng, codes) for _ in range(size)]
        results = await asyncio.gather(
            *(proof_routes.call(app, method, path, **options) for method, path, options in batch)
        )
        for exchange in results:
            if exchange.error is not None:
                outcomes[type(exchange.error).__name__] += 1
            else:
                outcomes[str(exchange.status)[0] + "xx"] += 1
        before, done = done, done + len(batch)
        if done // CHECK_EVERY != before // CHECK_EVERY:
            checkpoint(done)
    return outcomes


def test_a_long_run_of_messy_traffic_keeps_memory_flat_and_labels_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    monkeypatch.setattr(monitor, "LoopProfile", QuickProfile)
    # No stall events: a full collection of a large heap (the whole suite's, in CI) stalls an
    # in-process loop for a second now and then, and the stall history (bounded at 100 events
    # with their stacks) filling up is not what this test measures; requests are.
    app = StallwatchMiddleware(proof_routes.build(), registry=registry, stall_threshold=60.0)
    held: dict[int, int] = {}
    profiles: list[LoopProfile | None] = []
    sampled: list[int] = []

    def checkpoint(done: int) -> None:
        app.flush()
        if done == WARM_UP:
            profiles.append(app.monitor.profile if app.monitor is not None else None)
            tracemalloc.start()
        elif done > WARM_UP:
            held[done] = held_by_stallwatch()
            sampled.append(profiles[0].snapshot().samples if profiles[0] is not None else 0)

    async def main() -> Counter[str]:
        shutdown = await proof_routes.lifespan(app)
        try:
            return await soak(app, REQUESTS, random.Random(12), checkpoint)
        finally:
            await shutdown()

    started = time.monotonic()
    try:
        outcomes = asyncio.run(main())
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started

    # The traffic really was that messy, and every request came back.
    assert sum(outcomes.values()) == REQUESTS, outcomes
    assert {"2xx", "4xx", "5xx", "RuntimeError"} <= set(outcomes), outcomes
    # The profile that was watched was the quick one, and it did count the busy loop.
    (profile,) = profiles
    assert isinstance(profile, QuickProfile), profiles
    assert min(sampled) > 0, sampled
    first, *later = sorted(held)
    assert later, held
    assert max(held[n] for n in later) - held[first] <= GROWTH_LIMIT, (held, elapsed)

    routes = values(registry, "stallwatch_http_request_duration_seconds", "route")
    assert routes <= {*proof_routes.TEMPLATES, "<unmatched>"}, routes
    assert {"/items/{item_id:int}", "/api/v1/things/{thing_id:int}", "<unmatched>"} <= routes, (
        routes
    )
    methods = values(registry, "stallwatch_http_request_duration_seconds", "method")
    assert methods <= KNOWN_METHODS | {"OTHER"}, methods
    assert "OTHER" in methods
    statuses = values(registry, "stallwatch_http_request_duration_seconds", "status")
    assert all(s.isdigit() and 100 <= int(s) <= 599 for s in statuses), statuses
    for family in ("stallwatch_route_loop_hold_seconds", "stallwatch_route_loop_busy_seconds"):
        assert values(registry, family, "route") <= routes | {"<background>"}
    assert proof_routes.internal_errors(registry) == 0


def test_group_status_labels_status_by_class_and_keeps_the_series_few() -> None:
    """An app that answers with many codes: ``group_status=True`` keeps one series per class."""
    grouped, exact = CollectorRegistry(), CollectorRegistry()
    apps = [
        StallwatchMiddleware(proof_routes.build(), registry=grouped, group_status=True),
        StallwatchMiddleware(proof_routes.build(), registry=exact),
    ]

    async def main() -> None:
        for app in apps:
            shutdown = await proof_routes.lifespan(app)
            try:
                await soak(app, 5_000, random.Random(7), lambda done: None, range(200, 600))
            finally:
                await shutdown()

    asyncio.run(main())

    family = "stallwatch_http_request_duration_seconds"
    assert values(grouped, family, "status") <= {"1xx", "2xx", "3xx", "4xx", "5xx"}
    assert {"2xx", "4xx", "5xx"} <= values(grouped, family, "status")
    assert len(values(exact, family, "status")) > 100  # /status/{code} answered most codes
    assert len(label_sets(grouped)[family]) * 5 < len(label_sets(exact)[family])
    assert proof_routes.internal_errors(grouped) == proof_routes.internal_errors(exact) == 0
