"""How much of the stretch in progress ran inside ``allow_blocking()`` (``allow.py``).

A stall is *allowed* when code the app marked as expected to block held at least
``ALLOWED_SHARE`` of it. The timeline owns one ``Allowance`` and resets it at every poll;
``allow_blocking()`` opens and closes it around the marked code. Loop thread only.
"""

from __future__ import annotations

from dataclasses import dataclass

ALLOWED_SHARE = 0.5
"""A stall is *allowed* when code inside ``allow_blocking()`` held at least this share of it."""


@dataclass(slots=True)
class Allowance:
    """Seconds spent inside ``allow_blocking()`` in the stretch in progress; blocks nest."""

    held: float = 0.0
    """Seconds of closed blocks in this stretch (the timeline zeroes it at each poll)."""
    _depth: int = 0
    _since: float = 0.0

    def began(self, now: float) -> None:
        if not self._depth:
            self._since = now
        self._depth += 1

    def ended(self, now: float, stretch_start: float) -> None:
        """The outermost block closing adds its time in this stretch (it may have opened in
        an earlier one, before a poll)."""
        self._depth -= 1
        if not self._depth:
            self.held += now - max(self._since, stretch_start)

    def allowed(self, now: float, busy: float) -> bool:
        """Whether the stretch of ``busy`` seconds ending ``now`` was mostly allowed code."""
        held = self.held
        if self._depth:
            held += now - max(self._since, now - busy)
        return busy > 0 and held / busy >= ALLOWED_SHARE
