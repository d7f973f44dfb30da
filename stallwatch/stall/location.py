"""Where a stall happened, worded once: the log line, the report, the CLI and the pytest
plugin all name a stall's place through ``location()``, so that one stall reads the same
wherever it is seen (and the report can group by the very string the log printed)."""

from __future__ import annotations

import contextlib
import os

from ..events import Frame, StallEvent
from .callback import innermost_frame

NO_STACK = "(no stack sampled)"
"""No sample was taken while the loop was held (a short stall, or a ``gil``/``gc`` one)."""
LIBRARY_ONLY = "(library code only)"
"""Samples were taken, but no frame in them is the application's."""


def frame_text(frame: Frame, root: str | None = None) -> str:
    """``file:line in function``, the file relative to ``root`` when it lies inside it."""
    filename = frame.filename
    if root is not None and filename.startswith(root):
        with contextlib.suppress(ValueError):  # another drive (Windows)
            filename = os.path.relpath(filename, root)
    return f"{filename}:{frame.lineno} in {frame.function}"


def location(event: StallEvent, *, root: str | None = None, detail: bool = False) -> str:
    """The application's line that held the loop, or why there is none. With ``detail``,
    a stall in library code only also names the innermost frame sampled."""
    if event.top_frame is not None:
        return frame_text(event.top_frame, root)
    if not event.sampled:
        return NO_STACK
    if detail and event.stacks:
        innermost = innermost_frame(event.stacks[0].frames)
        if innermost is not None:
            return f"{frame_text(innermost, root)} {LIBRARY_ONLY}"
    return LIBRARY_ONLY
