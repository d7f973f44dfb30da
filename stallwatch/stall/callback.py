"""Which frames of a sampled loop-thread stack are the callback the loop was running.

Apart from ``sampling`` (which reads stacks) because everyone who names a place reads a stack
this way: the sampler's in-app rule (``StackSampler.top_frame``), a stall's location
(``location``) and the profile's filing (``profile.stacks``). It owns the shape of asyncio's
dispatch (``Handle._run``, ``_run_once``, the runners): pure functions of ``Frame`` records,
no state, any thread.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..events import Frame

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


def callback_frames(frames: Sequence[Frame]) -> Sequence[Frame]:
    """The frames above the loop's innermost dispatch frame (``Handle._run``,
    ``run_until_complete`` and the runners that call it): those of the callback it ran; none
    when the loop was in its own iteration (polling, timers) rather than in a callback.

    Frames at or below the dispatch belong to whoever started the loop: a stack that ends
    there was in the loop's own machinery, and naming the program's ``main`` would mislead.
    A stack without dispatch frames (a thread that runs no loop) is all callback.
    """
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if _is_dispatch(frame):
            # Above the standard loop's iteration and below a Handle are its own poll,
            # timers and I/O bookkeeping. uvloop dispatches from C: above its runner, the
            # callback's frames come next.
            return () if frame.function == "_run_once" else frames[index + 1 :]
    return frames


def innermost_frame(frames: Sequence[Frame]) -> Frame | None:
    """The innermost frame of the callback the loop was running, whoever's code it is: what
    to name when no frame of the callback is the application's. None when the stack ends in
    the loop's own dispatch."""
    inside = callback_frames(frames)
    return inside[-1] if inside else None
