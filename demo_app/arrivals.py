"""When each request of a step is due: the arrival schedules of the load generator.

A schedule is a sorted list of offsets in seconds from the step's start. Every kind sends
exactly ``round(rate * duration)`` requests, so a step's request count never depends on luck
and runs compare like with like; only *when* they leave differs:

- ``uniform``: evenly spaced, ``i / rate``. The kindest traffic there is: two requests never
  meet unless the server is more than full, so it hides queueing until the very end.
- ``poisson``: a Poisson process, as independent users produce. Given how many arrivals fall
  in a window, a Poisson process puts them independently and uniformly in it, so the schedule
  is that many uniform draws, sorted. This is the default: it is what production looks like,
  and it is what the M/D/1 prediction (``queueing.py``) assumes.
- ``bursts``: the same, but in clumps of ``BURST_SIZE`` requests due at the same instant (a
  page that fires ten API calls, a retry storm): the clumps arrive as a Poisson process.

Schedules are drawn from a seeded ``random.Random``, so a run can be repeated exactly.
"""

from __future__ import annotations

import random
from typing import Literal, get_args

Arrivals = Literal["poisson", "uniform", "bursts"]
ARRIVALS: tuple[Arrivals, ...] = get_args(Arrivals)
BURST_SIZE = 10
"""Requests per clump in ``bursts`` mode."""


def count(rate: float, duration: float) -> int:
    """How many requests a route sends in a step: at least one."""
    return max(1, round(rate * duration))


def uniform(rate: float, duration: float) -> list[float]:
    return [i / rate for i in range(count(rate, duration))]


def poisson(rate: float, duration: float, rng: random.Random) -> list[float]:
    return sorted(rng.uniform(0.0, duration) for _ in range(count(rate, duration)))


def bursts(rate: float, duration: float, rng: random.Random, size: int = BURST_SIZE) -> list[float]:
    total = count(rate, duration)
    clumps = sorted(rng.uniform(0.0, duration) for _ in range(-(-total // size)))
    return [clumps[i // size] for i in range(total)]


def schedule(kind: Arrivals, rate: float, duration: float, seed: int) -> list[float]:
    """The offsets of one route's requests in one step, for ``kind`` of arrivals."""
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate!r} and {duration!r}")
    if kind == "uniform":
        return uniform(rate, duration)
    rng = random.Random(seed)
    if kind == "poisson":
        return poisson(rate, duration, rng)
    if kind == "bursts":
        return bursts(rate, duration, rng)
    raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, got {kind!r}")
