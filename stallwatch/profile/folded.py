"""The profile as Brendan Gregg's folded stacks, for flamegraph.pl and speedscope.

One line per stack: the route as the root frame, then the frames from outermost to innermost
as ``function (file:line)``, separated by ``;``, then a space and the sample count::

    /cache/{key};handler (app.py:40);read_blocking (demo_app/cache.py:154) 812

Samples whose stack was not kept still appear, so that every route's total is right: under
``[other stacks]`` and their line's frame, or under the label that stands for them
(``(other lines)``, ``(no stack sampled)``). Identical lines are merged.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..events import Frame
from .records import ProfileSnapshot
from .stacks import OTHER_STACKS, ShortPaths, clean, folded_frame

_LINE = re.compile(r"^(?P<stack>[^\n]*\S) (?P<count>\d+)$")


def folded(snapshot: ProfileSnapshot, *, short: Callable[[str], str] | None = None) -> str:
    """The snapshot as folded stacks, one per line, most sampled route first; empty when
    there are no samples."""
    name = short if short is not None else ShortPaths()
    counts: dict[str, int] = {}
    for route in snapshot.routes:
        root = clean(route.route) or "?"
        for line in route.lines:
            unstacked = line.unstacked
            for stack in line.stacks:
                if not stack.frames:
                    unstacked += stack.count
                    continue
                key = root + ";" + ";".join(folded_frame(f, name) for f in stack.frames)
                counts[key] = counts.get(key, 0) + stack.count
            if unstacked:
                location = line.location
                if isinstance(location, Frame):
                    tail = f"{OTHER_STACKS};{folded_frame(location, name)}"
                else:
                    tail = clean(location)
                key = f"{root};{tail}"
                counts[key] = counts.get(key, 0) + unstacked
    return "".join(f"{key} {n}\n" for key, n in counts.items())


def parse_folded(text: str) -> list[tuple[list[str], int]]:
    """The (frames, count) of each line of folded stacks; ValueError naming the first line
    that breaks the format."""
    parsed: list[tuple[list[str], int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"line {number} is not 'frame;frame;... count': {line!r}")
        frames = match.group("stack").split(";")
        if any(not f for f in frames):
            raise ValueError(f"line {number} has an empty frame: {line!r}")
        parsed.append((frames, int(match.group("count"))))
    return parsed
