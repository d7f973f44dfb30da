"""Reading the loop thread's stack, and the ``Frame`` records its samples become.

Two threads use a sampler:

- the watchdog thread calls ``sample()`` every ``sample_interval`` while the loop is held. It
  holds the GIL while it walks, so every microsecond it spends is a microsecond more of the
  stall: the walk copies three fields per frame and nothing else, up to ``MAX_FRAMES``;
- the loop thread calls ``started_by()`` from the task factory on every task creation, so it
  looks at a handful of frames and decides each file once.

Which files are the application's is ``in_app``'s rule (the sampler holds one ``AppFiles``,
whose decisions both threads read and fill); which frames are the loop's callback is
``callback``'s. This module owns the walk, the cut marker (``OMITTED``), the call sites
``started_by`` remembers and the interned ``Frame`` records. No frame object outlives the
call that read it: a kept frame would keep the loop thread's locals (request bodies,
connections) alive.
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from types import CodeType, FrameType

from ..events import Frame, StackSample
from .callback import callback_frames
from .in_app import AppFiles

RawFrame = tuple[str, int, str]
RawStack = tuple[RawFrame, ...]
"""(filename, lineno, function) per frame, outermost first, as in a traceback."""

MAX_FRAMES = 1024
"""Most frames a sample holds, the cut marker included. A deeper stack keeps its innermost
frames (where the loop is held) and its ``OUTER_FRAMES`` outermost ones (where the loop
dispatched the callback, so that the top frame stays inside the callback)."""

OUTER_FRAMES = 32
"""Outermost frames kept past the cut: a thread's bootstrap, the loop's runner and dispatch
and the first frames of the callback fit in it with room to spare."""

MAX_WALK = 16384
"""Frames walked past the innermost ones before giving up on the outermost: a stack deeper
than this (a raised recursion limit) keeps only its innermost frames and the cut marker."""

OMITTED = "<frames omitted>"
"""Filename of the cut marker; its ``lineno`` is how many frames were left out."""

STARTED_BY_DEPTH = 12
"""Frames ``started_by`` looks at. From the task factory to the line that asked for a task,
asyncio's ``create_task``, ``gather`` and ``TaskGroup`` take 3 or 4 frames, anyio's
``start_soon`` 5, Starlette's ``call_next`` 7: anything deeper did not start from app code."""

STARTED_BY_CACHE = 4096
"""Call sites ``started_by`` remembers; past that it starts over (code generated at run time
could otherwise grow it without end)."""


class StackSampler:
    """Reads one thread's Python stack and tells the application's frames from the rest
    (by ``in_app.AppFiles``: ``in_app_include`` names packages or folders that are the
    application's even where a library's would be)."""

    def __init__(self, thread_id: int, *, in_app_include: tuple[str, ...] = ()) -> None:
        self.thread_id = thread_id
        self._files = AppFiles(in_app_include)
        self.in_app_include = self._files.in_app_include
        self._app = self._files.decided  # read directly by started_by, on the loop thread
        self._started: dict[tuple[int, int], tuple[CodeType, Frame]] = {}

    def sample(self) -> RawStack | None:
        """The thread's stack, outermost first, or None when the thread is gone.

        At most ``MAX_FRAMES`` entries: past that, the innermost frames, a cut marker (see
        ``omitted``) and the ``OUTER_FRAMES`` outermost frames.
        """
        frame: FrameType | None = sys._current_frames().get(self.thread_id)
        inner: list[RawFrame] = []
        append = inner.append
        for _ in range(MAX_FRAMES - OUTER_FRAMES - 1):
            if frame is None:
                break
            code = frame.f_code
            append((code.co_filename, frame.f_lineno or 0, code.co_name))
            frame = frame.f_back
        else:
            # Deeper than the bound: walk on without copying, keeping the last frames seen.
            rest: deque[FrameType] = deque(maxlen=OUTER_FRAMES + 1)
            walked = 0
            while frame is not None and walked < MAX_WALK:
                rest.append(frame)
                frame = frame.f_back
                walked += 1
            if frame is None and walked <= OUTER_FRAMES + 1:
                outer = list(rest)  # it fits after all: nothing to cut
            else:
                # Frames not reached (past MAX_WALK) are unknown: keep none rather than
                # frames from the middle that would pass for the outermost.
                outer = list(rest)[1:] if frame is None else []
                append((OMITTED, walked - len(outer), "<omitted>"))
            for kept in outer:
                code = kept.f_code
                append((code.co_filename, kept.f_lineno or 0, code.co_name))
            del rest, outer
        if not inner:
            return None
        inner.reverse()
        return tuple(inner)

    def is_app(self, filename: str) -> bool:
        """Whether a frame from this file is the application's code (decided once per file)."""
        known = self._app.get(filename)
        if known is None:
            known = self._files.is_app(filename)
        return known

    def top_frame(self, frames: Sequence[Frame]) -> Frame | None:
        """The innermost frame of the application's code inside the callback the loop was
        running (see ``callback_frames``), or None when the callback has none."""
        for frame in reversed(callback_frames(frames)):
            if self.is_app(frame.filename):
                return frame
        return None

    def started_by(self, skip: int = 0) -> Frame | None:
        """The innermost app frame of the calling thread's stack: from a task factory, the
        line that asked for the task (``create_task``, ``gather``, ``TaskGroup.create_task``,
        anyio's ``start_soon``), library frames in between skipped.

        ``skip`` frames above the caller are passed over unexamined (the caller's own
        helpers). Looks at ``STARTED_BY_DEPTH`` frames at most; None when none of them is the
        app's. Never raises, and keeps no frame.
        """
        try:
            frame: FrameType | None = sys._getframe(skip + 1)
            decided = self._app
            for _ in range(STARTED_BY_DEPTH):
                if frame is None:
                    return None
                code = frame.f_code
                app = decided.get(code.co_filename)
                if app is None:
                    app = self.is_app(code.co_filename)
                if app:
                    # A Frame costs a microsecond to build (frozen dataclass): one per call site
                    # and instruction, keyed by the code's id, which holding the code keeps valid.
                    key = (id(code), frame.f_lasti)
                    known = self._started.get(key)
                    if known is None:
                        if len(self._started) >= STARTED_BY_CACHE:
                            self._started.clear()
                        made = Frame(code.co_filename, frame.f_lineno or 0, code.co_name)
                        known = self._started[key] = (code, made)
                    return known[1]
                frame = frame.f_back
            return None
        except Exception:  # a stack shallower than skip, or anything else: no answer
            return None


def omitted(frame: Frame) -> int:
    """How many frames a cut marker stands for; 0 for any other frame."""
    return frame.lineno if frame.filename == OMITTED else 0


INTERNED_FRAMES = 65536
"""Distinct code locations whose ``Frame`` is shared by every event that shows it."""

_interned: dict[RawFrame, Frame] = {}


def _frame(raw: RawFrame) -> Frame:
    # Events keep their stacks (up to 1024 frames, five stacks, a hundred events): one Frame
    # object per code location, not per appearance, keeps that history small. Bounded: past
    # the cap, new locations get a Frame of their own. Written by the watchdog thread only.
    frame = _interned.get(raw)
    if frame is None:
        frame = Frame(*raw)
        if len(_interned) < INTERNED_FRAMES:
            _interned[raw] = frame
    return frame


def frames_of(stack: RawStack) -> tuple[Frame, ...]:
    """A sampled stack as the interned ``Frame`` records events keep (watchdog thread): the
    loop profile files its samples with them."""
    return tuple(_frame(raw) for raw in stack)


def aggregate(stacks: Iterable[RawStack], limit: int = 5) -> tuple[StackSample, ...]:
    """Distinct stacks, most frequent first, at most ``limit`` of them."""
    counts = Counter(stacks)
    return tuple(
        StackSample(frames=tuple(_frame(raw) for raw in stack), count=count)
        for stack, count in counts.most_common(limit)
    )
