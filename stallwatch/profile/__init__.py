"""Where the loop's time goes: a continuous line profile of the loop thread, by route.

Stalls name the line only for a stretch past the threshold; most of a loop's time goes in
short blocks that no stall shows (a 2 ms read a hundred times a second). While the loop is
busy, the watchdog samples the loop thread's stack at a steady rate (``sampler``); each
sample is charged to the request whose step ran and filed under its innermost line of
application code; the counts live in a bounded ring of time buckets (``aggregate``), read
as plain records (``records``). The report shows them per route with their stacks and a fix
where the call is recognised (``hints``, ``view``), and writes them as folded stacks for
flame graphs (``folded``).
"""

from __future__ import annotations

from .aggregate import LoopProfile
from .folded import folded, parse_folded
from .hints import Hint, hint_for
from .records import LineProfile, ProfileSnapshot, RouteProfile
from .sampler import ProfileSampler
from .stacks import LIBRARY_ONLY, LOOP_OWN, NO_STACK, OTHER_LINES, Location, locate
from .view import held_longest, held_longest_text, profile_text, profile_view

__all__ = [
    "LIBRARY_ONLY",
    "LOOP_OWN",
    "NO_STACK",
    "OTHER_LINES",
    "Hint",
    "LineProfile",
    "Location",
    "LoopProfile",
    "ProfileSampler",
    "ProfileSnapshot",
    "RouteProfile",
    "folded",
    "held_longest",
    "held_longest_text",
    "hint_for",
    "locate",
    "parse_folded",
    "profile_text",
    "profile_view",
]
