"""Stall events as text for people and as JSON for tools."""

from __future__ import annotations

import json
from collections.abc import Iterable

from ..events import StallEvent
from ..stall.location import location


def as_json(events: Iterable[StallEvent]) -> str:
    return json.dumps([event.to_dict() for event in events], indent=2)


def as_text(events: Iterable[StallEvent], *, stacks: bool = False) -> str:
    """One line per stall, newest last; with ``stacks`` the most frequent stack under each."""
    lines = [f"{'duration':>10}  {'cause':<10}  {'culprit':<24}  where"]
    for event in events:
        where = location(event)
        lines.append(
            f"{event.duration * 1e3:>8.1f}ms  {event.cause:<10}  {event.culprit:<24}  {where}"
        )
        if event.victims:
            victims = ", ".join(f"{route} x{n}" for route, n in event.victims.items())
            lines.append(f"{'':>10}  froze: {victims}")
        if stacks and event.stacks:
            for frame in event.stacks[0].frames[-6:]:
                lines.append(f"{'':>14}{frame}")
    return "\n".join(lines)
