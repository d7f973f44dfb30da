"""The report's JSON endpoints: what ``api/stalls``, ``api/summary``, ``api/loop`` and
``api/profile`` answer, from the monitor the request finds (None before the app started).

``http.py`` has already checked who asks and for which path. This module only reads the
monitor, from whichever thread serves the request, and reads defensively what may be missing
while the monitor starts or stops; the views themselves are ``data.py``'s pure functions.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

from .._types import Response
from ..pools.readings import pools_view
from ..profile import folded, profile_view
from .answers import api_answer, bare, json_answer
from .data import causes_view, loop_view, stalls_view, step_rates, summary

if TYPE_CHECKING:
    from ..events import StallEvent


class Watched(Protocol):
    """What the report asks of the monitor outright (``monitor.LoopMonitor`` is one); the
    rest (history, profile, pools, settings) it reads defensively, as any may be missing
    while the monitor starts or stops."""

    def recent_stalls(self) -> list[StallEvent]: ...

    def internal_error(self, component: str) -> None: ...


DEFAULT_WINDOW = 300.0
"""Seconds of loop history ``api/loop`` covers unless ``?window=`` asks for fewer."""


def endpoint_answer(
    monitor: Watched | None, sub: str, method: str, query: str, now: float
) -> Response:
    """The answer to ``sub`` (one of the API's paths) at wall-clock time ``now``."""
    events = monitor.recent_stalls() if monitor is not None else []
    if sub == "/api/stalls":
        return json_answer(200, {"generated_at": now, "stalls": stalls_view(events)}, method)
    if sub == "/api/summary":
        data = {
            "generated_at": now,
            "stalls": len(events),
            "groups": summary(events),
            "causes": causes_view(events),
        }
        return json_answer(200, data, method)
    window = DEFAULT_WINDOW
    raw = parse_qs(query).get("window")
    if raw:
        try:
            window = float(raw[-1])
        except ValueError:
            return bare(400)
        if not 0 < window <= 86_400:
            return bare(400)
    if sub == "/api/profile":
        return _profile(monitor, window, query, method, now)
    history = getattr(monitor, "history", None)
    snapshot = history.snapshot(window) if history is not None else None
    data = {
        "generated_at": now,
        "monitor": _monitor_info(monitor),
        **loop_view(snapshot),
        "pools": _pools(monitor),
    }
    return json_answer(200, data, method)


def _profile(monitor: Any, window: float, query: str, method: str, now: float) -> Response:
    """The line profile as JSON, or with ``?format=folded`` as folded stacks (text)."""
    profile = getattr(monitor, "profile", None)
    snapshot = profile.snapshot(window) if profile is not None else None
    form = parse_qs(query).get("format", ["json"])[-1]
    if form == "json":
        history = getattr(monitor, "history", None)
        timed = None
        if snapshot is not None and history is not None:
            # The routes' exact loop time over the seconds the samples cover.
            timed = step_rates(history.snapshot(snapshot.covered))
        view = profile_view(snapshot, timed=timed)
        return json_answer(200, {"generated_at": now, **view}, method)
    if form != "folded":
        return bare(400)
    body = folded(snapshot).encode() if snapshot is not None else b""
    return api_answer(200, "text/plain; charset=utf-8", body, method)


def _pools(monitor: Watched | None) -> list[dict[str, Any]]:
    """The thread pools' section: each pool now, and the routes whose work waited most."""
    watch = getattr(monitor, "pools", None)
    if watch is None:
        return []
    return pools_view(watch.readings(), watch.routes())


def _monitor_info(monitor: Watched | None) -> dict[str, Any]:
    """What the page says about the monitor itself, read defensively: any attribute may be
    missing while the monitor starts or stops."""
    if monitor is None:
        return {"running": False}
    info: dict[str, Any] = {
        "running": bool(getattr(monitor, "running", False)),
        "probe": getattr(monitor, "probe", None),
        "interval": getattr(monitor, "interval", None),
        "stall_threshold": getattr(monitor, "stall_threshold", None),
        "held_for": None,
    }
    held_since = getattr(monitor, "held_since", None)
    if callable(held_since):
        try:
            since = held_since()
            held = 0.0 if since is None else time.perf_counter() - float(since)
            # Served by the loop, the loop is "held" by this very request: only a stretch
            # past the threshold (seen from the off-loop server) is worth showing.
            if held >= float(getattr(monitor, "stall_threshold", 0.0)):
                info["held_for"] = held
        except Exception:
            pass  # a monitor between start and stop: nothing to say
    return info
