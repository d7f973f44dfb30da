"""The records stallwatch produces: what a stall was, who caused it, who paid for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Cause = Literal["blocking", "gc", "gil", "starvation"]
"""Why the loop did not poll.

- ``blocking``: code on the loop thread held it (a sync call in ``async def``, a CPU loop).
- ``gc``: most of the stall was a garbage-collection pause.
- ``gil``: the loop thread ran native code that kept the GIL, so no stack could be taken
  while it ran; the stack is not shown rather than a wrong one.
- ``starvation``: the loop thread wanted to run but barely did: other threads held the GIL
  (an executor doing Python work) or the CPU was not given to the process.
"""

CAUSES: tuple[Cause, ...] = ("blocking", "gc", "gil", "starvation")

BACKGROUND = "<background>"
"""Culprit name for loop time spent outside any request: callbacks, tasks, the server itself."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a sampled stack."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


@dataclass(frozen=True, slots=True)
class StackSample:
    """A distinct stack seen during a stall, with how many samples showed it."""

    frames: tuple[Frame, ...]  # innermost last, as in a traceback
    count: int


@dataclass(frozen=True, slots=True)
class StallEvent:
    """One stretch in which the event loop did not poll for longer than the threshold."""

    started_at: float
    """Wall-clock start (``time.time()`` scale), for display and correlation with logs."""
    duration: float
    """Seconds the loop did not poll, from the loop's own timing."""
    cause: Cause
    culprit: str
    """The route (or ``<background>``) that held the loop for the largest share. Work done by
    any task a request started, directly or through its children, counts as that request's."""
    culprits: dict[str, float]
    """Every holder of the loop during the stall and its share (0..1), largest first."""
    victims: dict[str, int]
    """Routes of the requests the stall froze (alive in it, not its culprits), how many each."""
    top_frame: Frame | None
    """The innermost frame of the application's code (outside the standard library,
    site-packages and stallwatch, unless ``in_app_include`` names them)."""
    stacks: tuple[StackSample, ...]
    """Distinct sampled stacks, most frequent first; empty when none could be taken."""
    sampled: bool
    """False when the watchdog could take no stack while the loop was held (see ``cause``)."""
    task: str | None
    """Name of the asyncio task that was running, when the watchdog saw one."""
    gc_seconds: float
    """Garbage-collection time that overlapped the stall."""
    loop_cpu_ratio: float | None
    """Share of the stall the loop thread spent on a CPU (None where the OS does not tell)."""
    extra: dict[str, float] = field(default_factory=dict)
    allowed: bool = False
    """The stall ran inside ``stallwatch.allow_blocking()``: counted, but expected."""
    started_by: Frame | None = None
    """For a stall in a task that a request started: the request's line that started it."""
    frozen: dict[str, float] = field(default_factory=dict)
    """Seconds the victims of each route waited in the stall, all of them together."""
    pool_threads: float | None = None
    """Threads of the pools (the default executor, anyio's) running work during the stall,
    on average: what a ``starvation`` stall competed with for the GIL and the CPU."""
    trace: object = None
    """With ``opentelemetry=True``: the OpenTelemetry span context of the stall's own span
    (``event loop stall``, in the culprit request's trace), else None."""

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view, the one ``/demo/stalls`` and the reports print."""
        return {
            "started_at": self.started_at,
            "duration": self.duration,
            "cause": self.cause,
            "culprit": self.culprit,
            "culprits": dict(self.culprits),
            "victims": dict(self.victims),
            "frozen": dict(self.frozen),
            "top_frame": str(self.top_frame) if self.top_frame else None,
            "started_by": str(self.started_by) if self.started_by else None,
            "allowed": self.allowed,
            "sampled": self.sampled,
            "task": self.task,
            "gc_seconds": self.gc_seconds,
            "loop_cpu_ratio": self.loop_cpu_ratio,
            "pool_threads": self.pool_threads,
            "stacks": [
                {"count": s.count, "frames": [str(f) for f in s.frames]} for s in self.stacks
            ],
        }
