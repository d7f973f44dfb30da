"""What the pools' counts mean, as pure functions and records: the rules behind the gauges,
the label set and the "pool threads during a stall" figure, readable and tested without
threads (``tests/test_pools.py``).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT = "default"
"""The loop's default executor: ``run_in_executor(None, ...)``, ``asyncio.to_thread``."""
ANYIO = "anyio"
"""anyio's default thread limiter: ``to_thread.run_sync``, Starlette's ``run_in_threadpool``,
FastAPI's plain ``def`` endpoints and dependencies."""
POOLS: tuple[str, ...] = (DEFAULT, ANYIO)
"""The ``pool`` label's only values."""

OTHER = "<other>"
"""The ``route`` value that routes past ``MAX_ROUTES`` share in a pool."""
MAX_ROUTES = 200
"""Distinct ``route`` values per pool; later newcomers share ``OTHER``. Routes are templates,
so an app reaches this only through a resolver that returns raw paths."""


@dataclass(frozen=True, slots=True)
class PoolReading:
    """One pool right now (any thread may take it)."""

    pool: str
    busy: int
    """Threads running work submitted through stallwatch's hooks."""
    waiting: int
    """Work submitted and not yet started: queued in the executor, or waiting for the
    limiter's token."""
    capacity: int | None
    """How many threads the pool may run at once (``max_workers``, the limiter's tokens);
    None until known."""

    @property
    def idle(self) -> int | None:
        return idle_threads(self.capacity, self.busy)


@dataclass(frozen=True, slots=True)
class RouteWait:
    """What one route's work cost in one pool since the monitor started."""

    jobs: int
    """Jobs that started."""
    wait: float
    """Seconds they waited from submission to start, all together."""
    longest_wait: float
    run: float
    """Seconds they ran, all together (jobs still running not included)."""

    @property
    def mean_wait(self) -> float:
        return self.wait / self.jobs if self.jobs else 0.0


def idle_threads(capacity: int | None, busy: int) -> int | None:
    """``state="idle"``: the part of the pool's capacity no job of ours occupies.

    Capacity, not the threads started so far: both pools start threads on demand (and anyio
    retires them after 10 idle seconds), so "threads alive" says nothing about whether new
    work would wait. ``idle == 0`` while ``waiting > 0`` is a saturated pool.
    """
    if capacity is None:
        return None
    return max(0, capacity - busy)


def route_label(route: str, known: Collection[str], cap: int = MAX_ROUTES) -> str:
    """The ``route`` label for a job: the route itself while the pool has seen fewer than
    ``cap`` routes (or has seen this one), ``OTHER`` after that."""
    if route in known or len(known) < cap:
        return route
    return OTHER


def threads_during(busy_before: float, busy_after: float, window: float) -> float | None:
    """Mean number of pool threads running over ``window`` seconds, from the busy-thread
    seconds counted at its start and end (``PoolWatch.busy_seconds``); None for no window."""
    if window <= 0:
        return None
    return max(0.0, (busy_after - busy_before) / window)


def default_executor_size() -> int:
    """The threads of a ``ThreadPoolExecutor()`` built without ``max_workers``, as asyncio and
    uvloop build their default one: ``min(32, CPUs + 4)`` (usable CPUs from 3.13 on)."""
    cpus = getattr(os, "process_cpu_count", os.cpu_count)()
    return min(32, (cpus or 1) + 4)


def capacity_of(executor: object) -> int | None:
    """``max_workers`` of a ``concurrent.futures`` executor, None if it does not say."""
    size = getattr(executor, "_max_workers", None)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def tokens(total: object) -> int | None:
    """A limiter's ``total_tokens`` as a thread count (anyio allows ``math.inf``)."""
    if isinstance(total, bool) or not isinstance(total, (int, float)):
        return None
    if total != total or total == float("inf") or total < 0:  # NaN, unlimited
        return None
    return int(total)


ROUTES_SHOWN = 12
"""Routes per pool in the report, most waited first."""


def pools_view(
    readings: Sequence[PoolReading], routes: Mapping[str, Mapping[str, RouteWait]]
) -> list[dict[str, Any]]:
    """The report's "thread pools" section as JSON: each pool now, and the routes whose work
    waited longest in it (all the waiting together) since the monitor started."""
    view = []
    for reading in readings:
        waits = sorted(
            routes.get(reading.pool, {}).items(), key=lambda kv: kv[1].wait, reverse=True
        )
        view.append(
            {
                "pool": reading.pool,
                "busy": reading.busy,
                "idle": reading.idle,
                "capacity": reading.capacity,
                "waiting": reading.waiting,
                "routes": [
                    {
                        "route": route,
                        "jobs": wait.jobs,
                        "mean_wait": wait.mean_wait,
                        "longest_wait": wait.longest_wait,
                        "wait": wait.wait,
                        "run": wait.run,
                    }
                    for route, wait in waits[:ROUTES_SHOWN]
                ],
            }
        )
    return view
