"""Stacks of the loop thread, taken from the watchdog thread while the loop is held."""

from __future__ import annotations

import os
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterable
from types import FrameType

from .events import Frame, StackSample

RawFrame = tuple[str, int, str]
RawStack = tuple[RawFrame, ...]

MAX_DEPTH = 48
"""Deeper frames rarely name the culprit and cost a walk on every sample."""


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    roots.add(os.path.dirname(os.path.abspath(__file__)))
    return tuple(sorted({os.path.join(os.path.realpath(r), "") for r in roots}))


_SELF_TEST = os.path.join(os.path.dirname(os.path.realpath(__file__)), "__main__.py")
"""``python -m stallwatch`` blocks the loop from inside the package, on purpose."""


class StackSampler:
    """Reads one thread's Python stack and names its innermost frame of user code."""

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self._roots = _library_roots()
        self._user: dict[str, bool] = {}

    def sample(self) -> RawStack | None:
        frame: FrameType | None = sys._current_frames().get(self.thread_id)
        if frame is None:
            return None
        frames: list[RawFrame] = []
        while frame is not None and len(frames) < MAX_DEPTH:
            code = frame.f_code
            frames.append((code.co_filename, frame.f_lineno or 0, code.co_name))
            frame = frame.f_back
        frames.reverse()
        return tuple(frames)

    def is_user(self, filename: str) -> bool:
        known = self._user.get(filename)
        if known is None:
            if filename.startswith("<"):
                known = False
            else:
                real = os.path.realpath(filename)
                known = real == _SELF_TEST or not real.startswith(self._roots)
            self._user[filename] = known
        return known

    def top_user_frame(self, frames: tuple[Frame, ...]) -> Frame | None:
        """The innermost user frame *inside the callback the loop was running*.

        Frames at or below the loop's own dispatch (``Handle._run``, ``run_until_complete``
        and the runners that call it) belong to whoever started the loop: a stack that ends
        there was in the loop's machinery, and naming the program's ``main`` would mislead.
        """
        for frame in reversed(frames):
            if _is_dispatch(frame):
                return None
            if self.is_user(frame.filename):
                return frame
        return None


_DISPATCH = {
    ("events.py", "_run"),
    ("base_events.py", "_run_once"),
    ("base_events.py", "run_forever"),
    ("base_events.py", "run_until_complete"),
    ("runners.py", "run"),
}


def _is_dispatch(frame: Frame) -> bool:
    return (os.path.basename(frame.filename), frame.function) in _DISPATCH and (
        f"{os.sep}asyncio{os.sep}" in frame.filename
    )


def aggregate(stacks: Iterable[RawStack], limit: int = 5) -> tuple[StackSample, ...]:
    """Distinct stacks, most frequent first, at most ``limit`` of them."""
    counts = Counter(stacks)
    return tuple(
        StackSample(frames=tuple(Frame(*raw) for raw in stack), count=count)
        for stack, count in counts.most_common(limit)
    )
