"""Where one sample of the loop thread is filed, and how its frames are written.

A sample is filed under its *location*: the innermost frame of the application's code inside
the callback the loop was running (``StackSampler.top_frame``, the rule the stall stacks
follow), or a label saying why there is none. The frames kept with it are those of the
callback only (the loop's runner and dispatch below it are the same in every sample), at
most ``PROFILE_DEPTH`` of them, innermost kept.

Nothing here keeps a frame object or reads a clock: these are functions of interned
``Frame`` records, called on the watchdog thread per sample and on any thread per view.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from ..events import Frame
from ..stall.callback import callback_frames
from ..stall.sampling import OMITTED, omitted

Location = Frame | str
"""A line of the application's code, or one of the labels below."""

NO_STACK = "(no stack sampled)"
"""The loop was busy at the sample's moment, but no stack could be read in time (a native
call kept the GIL, so the watchdog got it only later): counted, for the loop's time, but no
line is named rather than a wrong one."""
LIBRARY_ONLY = "(library code only)"
"""The callback the loop ran had no frame of the application's code (the server parsing a
request, a library's own task)."""
LOOP_OWN = "(the loop's own code)"
"""The loop was between callbacks: its timers, its ready queue, its I/O bookkeeping."""
OTHER_LINES = "(other lines)"
"""A route's lines past the ones kept, folded into one row."""
OTHER_ROUTES = "(other routes)"
"""Routes past the ones a time bucket keeps, folded into one."""
OTHER_STACKS = "[other stacks]"
"""Frame standing for the stacks of a line that were not kept, in the folded output."""

PROFILE_DEPTH = 48
"""Innermost frames kept per sampled stack; past that a cut marker says how many were left
out. A handler, the framework's layers above it and the call that blocks fit in it."""

LABELS = frozenset({NO_STACK, LIBRARY_ONLY, LOOP_OWN, OTHER_LINES, OTHER_ROUTES})


def locate(
    frames: Sequence[Frame], top_frame: Callable[[Sequence[Frame]], Frame | None]
) -> tuple[Location, tuple[Frame, ...]]:
    """The sample's location and the frames to keep with it, outermost first.

    ``top_frame`` is the sampler's in-app rule (``StackSampler.top_frame``). When the loop
    was in its own iteration rather than in a callback, the frames from its ``_run_once``
    inward are kept, so that the loop's own time still shows where it went.
    """
    inside = callback_frames(frames)
    if not inside:
        start = next(
            (i for i in range(len(frames) - 1, -1, -1) if frames[i].function == "_run_once"), 0
        )
        return LOOP_OWN, _trim(frames[start:])
    top = top_frame(inside)
    return (top if top is not None else LIBRARY_ONLY), _trim(inside)


def _trim(frames: Sequence[Frame]) -> tuple[Frame, ...]:
    if len(frames) <= PROFILE_DEPTH:
        return tuple(frames)
    kept = PROFILE_DEPTH - 1
    cut = len(frames) - kept + sum(omitted(f) - 1 for f in frames[:-kept] if omitted(f))
    return (Frame(OMITTED, cut, "<omitted>"), *frames[-kept:])


def location_text(location: Location) -> str:
    """``file:line in function`` (as stalls are named), or the label."""
    return location if isinstance(location, str) else str(location)


class ShortPaths:
    """File names as a reader knows them: relative to the ``sys.path`` entry they were
    imported from (``demo_app/cache.py``, ``starlette/routing.py``, ``asyncio/events.py``),
    else relative to the working directory when under it, else as they are.

    Built per view (``sys.path`` and the working directory are read once, at construction);
    remembers up to ``CACHE`` names.
    """

    CACHE = 4096

    def __init__(self) -> None:
        cwd = os.getcwd()
        roots = {
            os.path.join(os.path.abspath(p or cwd), "") for p in sys.path if isinstance(p, str)
        }
        roots.add(os.path.join(cwd, ""))
        self._roots = sorted(roots, key=len, reverse=True)
        self._known: dict[str, str] = {}

    def __call__(self, filename: str) -> str:
        known = self._known.get(filename)
        if known is None:
            known = filename
            if not filename.startswith("<"):
                for root in self._roots:  # longest first: the most specific entry
                    if filename.startswith(root) and len(filename) > len(root):
                        known = filename[len(root) :]
                        break
            if len(self._known) < self.CACHE:
                self._known[filename] = known
        return known


def folded_frame(frame: Frame, short: Callable[[str], str]) -> str:
    """One frame of the folded format: ``function (file:line)``; a cut marker reads
    ``[N frames omitted]``. ``;`` and line breaks, which the format reserves, become ``,``
    and spaces."""
    cut = omitted(frame)
    text = (
        f"[{cut} frames omitted]"
        if cut
        else f"{frame.function} ({short(frame.filename)}:{frame.lineno})"
    )
    return clean(text)


def clean(text: str) -> str:
    """``text`` made safe as one frame of a folded line."""
    return text.replace(";", ",").replace("\n", " ").replace("\r", " ")
