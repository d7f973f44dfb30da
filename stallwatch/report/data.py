"""What the report shows, as pure functions of the stall events and the loop history.

Nothing here reads a clock, a monitor or a request: the HTTP layer (``report.http``) gathers
the inputs and serves the outputs, so every grouping and ordering rule can be tested on plain
values. All durations are seconds, all times wall-clock (``time.time()``) seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..events import Frame, StallEvent
from ..profile.hints import event_hint
from ..stall.location import location

STACKS_PER_GROUP = 3
"""Distinct stacks kept per location: the most frequent ones, which is what one reads."""


def location_of(event: StallEvent) -> str:
    """The code location a stall is filed under: ``file:line in function``, or a label."""
    return location(event)


def _allowed(event: StallEvent) -> bool:
    # ``allowed`` is new in the event; an older event (or a stand-in) simply is not allowed.
    return bool(getattr(event, "allowed", False))


def _started_by(event: StallEvent) -> str | None:
    frame = getattr(event, "started_by", None)
    return None if frame is None else str(frame)


def stall_view(event: StallEvent) -> dict[str, Any]:
    """One stall as JSON: the event's own view plus where the report files it."""
    view = event.to_dict()
    view.setdefault("allowed", _allowed(event))
    view.setdefault("started_by", _started_by(event))
    view["location"] = location_of(event)
    view["ended_at"] = event.started_at + event.duration
    return view


def stalls_view(events: Sequence[StallEvent]) -> list[dict[str, Any]]:
    """The stalls as JSON, newest first."""
    ordered = sorted(events, key=lambda e: e.started_at, reverse=True)
    return [stall_view(event) for event in ordered]


@dataclass(slots=True)
class _Group:
    """The running totals of one location while ``summary`` folds the events."""

    location: str
    allowed: bool
    frame: Frame | None
    count: int = 0
    total: float = 0.0
    longest: float = 0.0
    first: float = float("inf")
    last: float = float("-inf")
    causes: dict[str, int] = field(default_factory=dict)
    culprits: dict[str, int] = field(default_factory=dict)
    victims: dict[str, int] = field(default_factory=dict)
    started_by: dict[str, int] = field(default_factory=dict)
    stacks: dict[tuple[str, ...], int] = field(default_factory=dict)
    hint: dict[str, str] | None = None

    def add(self, event: StallEvent) -> None:
        self.count += 1
        if self.hint is None:  # the first stall whose stack says what the call is
            found = event_hint(event)
            self.hint = found.to_dict() if found is not None else None
        self.total += event.duration
        self.longest = max(self.longest, event.duration)
        self.first = min(self.first, event.started_at)
        self.last = max(self.last, event.started_at + event.duration)
        _bump(self.causes, event.cause)
        _bump(self.culprits, event.culprit)
        for route, requests in event.victims.items():
            _bump(self.victims, route, requests)
        origin = _started_by(event)
        if origin is not None:
            _bump(self.started_by, origin)
        for sample in event.stacks:
            _bump(self.stacks, tuple(str(f) for f in sample.frames), sample.count)

    def view(self) -> dict[str, Any]:
        frame = self.frame
        stacks = sorted(self.stacks.items(), key=lambda kv: -kv[1])[:STACKS_PER_GROUP]
        return {
            "location": self.location,
            "file": frame.filename if frame is not None else None,
            "line": frame.lineno if frame is not None else None,
            "function": frame.function if frame is not None else None,
            "allowed": self.allowed,
            "count": self.count,
            "total_seconds": self.total,
            "max_seconds": self.longest,
            "mean_seconds": self.total / self.count,
            "first_seen": self.first,
            "last_seen": self.last,
            "cause": _most(self.causes),
            "causes": _ranked(self.causes),
            "culprit": _most(self.culprits),
            "culprits": _ranked(self.culprits),
            "victims": _ranked(self.victims),
            "started_by": _ranked(self.started_by),
            "stacks": [{"count": n, "frames": list(frames)} for frames, n in stacks],
            "hint": self.hint,
        }


def _bump(counts: dict[Any, int], key: Any, by: int = 1) -> None:
    counts[key] = counts.get(key, 0) + by


def _ranked(counts: Mapping[str, int]) -> dict[str, int]:
    """Largest first, ties by name, so the JSON is stable from one refresh to the next."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _most(counts: Mapping[str, int]) -> str | None:
    return next(iter(_ranked(counts)), None)


def summary(events: Iterable[StallEvent]) -> list[dict[str, Any]]:
    """The stalls grouped by code location, the costliest first.

    Stalls inside ``allow_blocking()`` form groups of their own (``"allowed": true``) that
    come after every other group: they are known and accepted, so they must neither hide nor
    inflate the offenders a reader is looking for.
    """
    groups: dict[tuple[str, bool], _Group] = {}
    for event in events:
        key = (location_of(event), _allowed(event))
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(key[0], key[1], event.top_frame)
        group.add(event)
    ordered = sorted(groups.values(), key=lambda g: (g.allowed, -g.total, g.location))
    return [group.view() for group in ordered]


def causes_view(events: Iterable[StallEvent]) -> list[dict[str, Any]]:
    """Stall count and seconds by cause (allowed stalls excluded), the costliest first."""
    totals: dict[str, list[float]] = {}
    for event in events:
        if _allowed(event):
            continue
        entry = totals.setdefault(event.cause, [0, 0.0])
        entry[0] += 1
        entry[1] += event.duration
    return [
        {"cause": cause, "count": int(n), "total_seconds": seconds}
        for cause, (n, seconds) in sorted(totals.items(), key=lambda kv: (-kv[1][1], kv[0]))
    ]


def loop_view(snapshot: Mapping[str, Any] | None) -> dict[str, Any]:
    """The loop's recent window for the report: the history's snapshot plus a
    victim-by-culprit table (rows: frozen routes, columns: who froze them, largest first).

    ``None`` (no history: the monitor is not running yet) gives the same shape, empty.
    """
    if snapshot is None:
        return {
            "available": False,
            "window": 0.0,
            "covered": 0.0,
            "beats": 0,
            "lag": {"p50": None, "p90": None, "p99": None, "p99.9": None, "max": None},
            "series": [],
            "routes": [],
            "frozen": [],
            "frozen_table": {"culprits": [], "rows": []},
        }
    view = dict(snapshot)
    view["available"] = True
    view["frozen_table"] = frozen_table(snapshot.get("frozen", ()))
    return view


def frozen_table(cells: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``[{route, culprit, seconds}]`` as a matrix: who waited (rows) for whom (columns)."""
    by_route: dict[str, dict[str, float]] = {}
    by_culprit: dict[str, float] = {}
    for cell in cells:
        route, culprit, seconds = str(cell["route"]), str(cell["culprit"]), float(cell["seconds"])
        row = by_route.setdefault(route, {})
        row[culprit] = row.get(culprit, 0.0) + seconds
        by_culprit[culprit] = by_culprit.get(culprit, 0.0) + seconds
    culprits = [c for c, _ in sorted(by_culprit.items(), key=lambda kv: (-kv[1], kv[0]))]
    ordered = sorted(by_route.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    rows = [
        {"route": route, "total": sum(row.values()), "by": {c: row.get(c, 0.0) for c in culprits}}
        for route, row in ordered
    ]
    return {"culprits": culprits, "rows": rows}


def step_rates(snapshot: Mapping[str, Any] | None) -> dict[str, float]:
    """Each route's loop seconds per second in a history snapshot, from its steps' exact
    timing: what the profile's view scales its samples to (``profile_view(timed=...)``).

    The span is the one the snapshot's buckets really cover (its first bucket's start to
    now, at most the history's age), not the whole buckets' length it reports as ``covered``,
    so that a window of a few seconds is not read a bucket's worth low.
    """
    if not snapshot or not snapshot.get("routes"):
        return {}
    series = snapshot.get("series") or []
    span = float(snapshot["covered"])
    if series:
        span = min(span, float(snapshot["now"]) - float(series[0]["t"]))
    if span <= 0:
        return {}
    return {str(row["route"]): float(row["busy"]) / span for row in snapshot["routes"]}
