"""The profile as the report, the CLI and the pytest plugin show it.

``profile_view`` turns a snapshot into JSON-ready dicts (``api/profile``); ``profile_text``
and ``held_longest_text`` turn that JSON back into text, so the CLI (which reads the JSON
over HTTP) and the plugin (which has it in process) print the same thing.

Loop milliseconds per second come two ways. A route the middleware times (``timed``: its
loop seconds per second from its steps' exact timing, the report's *Share of the loop*) keeps
that exact figure, and each of its lines gets the route's figure times the line's share of
the route's samples: the samples say where the time went, the clock says how much there was.
The sampler misses moments, and not at random (a watchdog sharing the loop's only core wakes
after the block it should have seen), so samples alone read a route low; their shares hold.
The steps count a request when it ends, so for a route whose requests are still running (a
websocket, a long stream) the samples may say more: the larger of the two stands. Anything not
timed (``<background>``, ``(other routes)``, a loop without the middleware) is samples times
the sampling period over the seconds the window covers: a statistical estimate whose error
shrinks with the square root of the samples (at 100 samples per busy second, a line that
holds the loop 100 ms/s for a minute has 600 samples: about 4 % relative error).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..events import Frame
from .hints import Hint, hint_for
from .records import LineProfile, ProfileSnapshot
from .stacks import ShortPaths, location_text

EMPTY: dict[str, Any] = {
    "available": False,
    "window": 0.0,
    "covered": 0.0,
    "rate": None,
    "period": None,
    "samples": 0,
    "busy_ms_per_s": 0.0,
    "routes": [],
}
"""The view when no profile is kept (the monitor has not started, or profiling is off)."""


def profile_view(
    snapshot: ProfileSnapshot | None,
    *,
    hint: Callable[[LineProfile], Hint | None] | None = None,
    short: Callable[[str], str] | None = None,
    timed: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The snapshot as JSON: per route its loop ms/s and share of the loop, then its lines
    (most sampled first), each with its share of the route, hint and stacks.

    ``timed`` maps a route to its loop seconds per second over the same window, measured
    from its steps; those routes and their lines take their ms/s from it (``"timed": true``),
    unless the samples alone say more (requests still running are not in the steps yet).
    """
    if snapshot is None:
        return dict(EMPTY)
    name = short if short is not None else ShortPaths()
    find_hint = hint if hint is not None else line_hint
    per_sample = snapshot.period * 1e3 / snapshot.covered  # ms/s that one sample stands for
    routes = []
    busy = 0.0
    for route in snapshot.routes:
        steps = timed.get(route.route) if timed is not None and route.samples else None
        route_ms, from_steps = route_rate(route.samples * per_sample, steps)
        # ms/s that one of this route's samples stands for: its share of the route's figure
        per_line = route_ms / route.samples if from_steps else per_sample
        busy += route_ms
        lines = []
        for line in route.lines:
            location = line.location
            frame = location if isinstance(location, Frame) else None
            found = find_hint(line)
            lines.append(
                {
                    "location": location_text(location),
                    "where": f"{name(frame.filename)}:{frame.lineno} in {frame.function}"
                    if frame is not None
                    else location,
                    "file": frame.filename if frame is not None else None,
                    "line": frame.lineno if frame is not None else None,
                    "function": frame.function if frame is not None else None,
                    "samples": line.samples,
                    "share": line.samples / route.samples if route.samples else 0.0,
                    "ms_per_s": line.samples * per_line,
                    "hint": found.to_dict() if found is not None else None,
                    "stacks": [
                        {"count": s.count, "frames": [str(f) for f in s.frames]}
                        for s in line.stacks
                    ],
                    "unstacked": line.unstacked,
                }
            )
        routes.append(
            {
                "route": route.route,
                "samples": route.samples,
                "ms_per_s": route_ms,
                "share": route_ms / 1e3,
                "timed": from_steps,
                "lines": lines,
            }
        )
    return {
        "available": True,
        "window": snapshot.window,
        "covered": snapshot.covered,
        "now": snapshot.now,
        "rate": 1.0 / snapshot.period,
        "period": snapshot.period,
        "samples": snapshot.samples,
        "busy_ms_per_s": busy,
        "routes": routes,
    }


def line_hint(line: LineProfile) -> Hint | None:
    """The hint for a line, from its most frequent stack (or the line alone)."""
    location = line.location
    if not isinstance(location, Frame):
        return None
    frames = line.stacks[0].frames if line.stacks else (location,)
    return hint_for(frames, location)


# -- text ----------------------------------------------------------------------------------------


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def profile_text(view: Mapping[str, Any], *, routes: int = 10, lines: int = 5) -> str:
    """The top lines by route, as ``stallwatch report`` prints them under the stalls."""
    if not view.get("available"):
        return "no profile: the service keeps none (profile=False, or not started yet)"
    rows: list[str] = []
    covered = float(view.get("covered") or 0.0)
    rate = float(view.get("rate") or 0)
    busy = float(view.get("busy_ms_per_s") or 0)
    head = (
        f"where the loop's time goes (last {covered:.0f} s, {view.get('samples', 0)} samples "
        f"at {rate:g}/s): {busy:.1f} ms/s busy"
    )
    rows.append(head)
    shown = [r for r in view.get("routes", []) if isinstance(r, Mapping)][:routes]
    if not shown:
        rows.append("no samples: the loop was idle whenever it was sampled")
        return "\n".join(rows)
    for route in shown:
        rows.append(
            f"{route['route']}  {float(route['ms_per_s']):.1f} ms/s, "
            f"{_pct(float(route['share']))} of the loop"
        )
        for line in [x for x in route.get("lines", []) if isinstance(x, Mapping)][:lines]:
            hint = line.get("hint")
            text = f"  {_pct(float(line['share'])):>6}  {line.get('where') or line['location']}"
            if isinstance(hint, Mapping) and hint.get("text"):
                text += f"  -> {hint['text']}"
            rows.append(text)
    return "\n".join(rows)


def held_longest(view: Mapping[str, Any], top: int = 10) -> list[dict[str, Any]]:
    """The lines that held the loop longest, all routes together: route, line, seconds."""
    covered = float(view.get("covered") or 0.0)
    found = []
    for route in view.get("routes", []):
        for line in route.get("lines", []):
            if line.get("file") is None:
                continue  # a label, not a line
            found.append(
                {
                    "route": route["route"],
                    "where": line.get("where") or line["location"],
                    "seconds": float(line["ms_per_s"]) * covered / 1e3,
                    "hint": (line.get("hint") or {}).get("text"),
                }
            )
    found.sort(key=lambda row: -float(row["seconds"]))
    return found[:top]


def held_longest_text(view: Mapping[str, Any], top: int = 10) -> list[str]:
    """``held_longest`` as lines of text, most first."""
    rows = []
    for row in held_longest(view, top):
        text = f"{row['seconds'] * 1e3:9.1f} ms  {row['where']}  ({row['route']})"
        if row["hint"]:
            text += f"  -> {row['hint']}"
        rows.append(text)
    return rows


def route_rate(sampled_ms: float, steps: float | None) -> tuple[float, bool]:
    """A route's loop milliseconds per second, and whether its steps' timing gave it.

    The steps count a request's time when it ends: while a long one (a websocket, a stream)
    still runs, its samples can say more than its steps, and the larger figure stands.
    """
    if steps is not None and steps * 1e3 >= sampled_ms:
        return steps * 1e3, True
    return sampled_ms, False
