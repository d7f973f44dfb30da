"""What a stall means for a test: limits, the verdict, the failure message, the report record.

Pure functions of a ``StallEvent`` and the test's limit; the pytest plugin calls them.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ..events import BACKGROUND, Frame, StallEvent
from ..profile.hints import event_hint
from ..stall.location import NO_STACK, frame_text, location

DEFAULT_THRESHOLD = 0.020
"""Stalls shorter than this are not recorded, unless a limit in the run is lower."""
FAILING_CAUSES = frozenset({"blocking", "gil"})
"""Code on the loop held it. ``starvation`` (a loaded CI machine, other threads) and ``gc``
are reported, never failed on: they are not the line the stack names."""
_DISPATCH = ("events.py", "base_events.py", "runners.py")
_SELF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")
_STDLIB = tuple(os.path.join(sysconfig.get_paths()[key], "") for key in ("stdlib", "platstdlib"))


def parse_limit(value: object, where: str) -> float:
    """A limit in milliseconds, as seconds; ``where`` names the option or marker on error."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise pytest.UsageError(f"{where} must be a positive number of ms, got {value!r}")
    return float(value) / 1e3


def threshold_for(limits: Sequence[float]) -> float:
    """Record stalls from half the smallest limit, so the report shows near misses too."""
    return max(0.001, min([DEFAULT_THRESHOLD, *(limit / 2 for limit in limits)]))


def monitor_options(threshold: float, registry: CollectorRegistry) -> dict[str, Any]:
    return {
        "stall_threshold": threshold,
        "floor": min(0.001, threshold),
        "sample_interval": max(0.0005, min(0.005, threshold / 4)),
        "history": 1000,  # per loop, between two test phases
        "registry": registry,
    }


def overlaps(event: StallEvent, start: float, stop: float) -> bool:
    return event.started_at <= stop and event.started_at + event.duration >= start


def is_allowed(event: StallEvent) -> bool:
    return bool(getattr(event, "allowed", False))


def fails(event: StallEvent, limit: float) -> bool:
    """Whether a stall fails a test whose limit is ``limit`` (``allow_stall`` aside)."""
    return event.duration > limit and event.cause in FAILING_CAUSES and not is_allowed(event)


def where(frame: Frame | None, root: Path) -> str:
    """A frame as the plugin prints it: as every surface words it, relative to ``root``."""
    return frame_text(frame, str(root)) if frame is not None else NO_STACK


def _library(filename: str) -> str | None:
    """The package a library frame belongs to (site-packages or stdlib), None for user code."""
    if filename.startswith("<"):
        return "<frozen>"
    if filename.startswith(_SELF):
        return "stallwatch"
    for marker in ("site-packages", "dist-packages"):
        _, found, rest = filename.partition(f"{os.sep}{marker}{os.sep}")
        if found:
            return rest.split(os.sep, 1)[0]
    for root in _STDLIB:
        if filename.startswith(root):
            return filename[len(root) :].split(os.sep, 1)[0].removesuffix(".py")
    return None


def stack_lines(event: StallEvent, root: Path) -> list[str]:
    """The most frequent stack, innermost last, from the callback the loop was running.

    Library frames outside the top user frame are folded into one line per run (the
    framework's middleware layers); from the top user frame inward every frame is shown.
    """
    if not event.stacks:
        return [f"  (no stack sampled: cause {event.cause})"]
    frames = list(event.stacks[0].frames)
    for i in range(len(frames) - 1, -1, -1):
        if _library(frames[i].filename) == "asyncio" and (
            os.path.basename(frames[i].filename) in _DISPATCH
        ):
            frames = frames[i + 1 :]  # the loop's own machinery and whoever started it
            break
    top = event.top_frame
    inner = max((i for i, f in enumerate(frames) if f == top), default=len(frames) - 10)
    lines: list[str] = []
    folded: list[str] = []
    for i, f in enumerate(frames):
        package = _library(f.filename)
        if i < inner and package is not None:
            folded.append(package)
            continue
        if folded:
            names = ", ".join(dict.fromkeys(folded))
            lines.append(f"  ... {len(folded)} library frame(s) in {names}")
            folded = []
        lines.append(f"  {where(f, root)}")
        source = linecache.getline(f.filename, f.lineno).strip()
        if source:
            lines.append(f"    {source}")
    return lines


def describe(event: StallEvent, limit: float, root: Path, phase: str) -> str:
    culprit = f", culprit {event.culprit}" if event.culprit != BACKGROUND else ""
    during = "" if phase == "call" else f" during {phase}"
    return (
        f"stallwatch: event loop stalled for {event.duration * 1e3:.1f} ms ({event.cause}) "
        f"at {location(event, root=str(root))}{culprit}{during}; limit {limit * 1e3:g} ms"
    )


def failure_text(over: Sequence[StallEvent], limit: float, root: Path, phase: str) -> str:
    worst = max(over, key=lambda e: e.duration)
    lines = [describe(worst, limit, root, phase), *stack_lines(worst, root)]
    hint = event_hint(worst)
    if hint is not None:
        lines.append(f"  fix: {hint}")
    others = [e for e in over if e is not worst]
    if others:
        lines.append(f"and {len(others)} more stall(s) over the limit:")
        lines.extend("  " + describe(e, limit, root, phase) for e in others)
    return "\n".join(lines)


def stall_record(
    event: StallEvent, phase: str, limit: float | None, root: Path, *, opted_out: bool = False
) -> dict[str, Any]:
    """One stall in the JSON report; ``fails``: it failed (or would fail) its test."""
    started_by = getattr(event, "started_by", None)
    return {
        "phase": phase,
        "started_at": event.started_at,
        "duration_ms": round(event.duration * 1e3, 3),
        "cause": event.cause,
        "culprit": event.culprit,
        "top_frame": where(event.top_frame, root) if event.top_frame else None,
        "started_by": where(started_by, root) if started_by is not None else None,
        "allowed": is_allowed(event),
        "over_limit": limit is not None and event.duration > limit,
        "fails": limit is not None and not opted_out and fails(event, limit),
    }
