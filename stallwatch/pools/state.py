"""One thread pool's counts, kept exact across the threads that change them.

Work is *submitted* on the loop thread, *starts* and *finishes* on a pool thread, and is
*dropped* on the loop thread when it was cancelled before it started. Each of these changes
the counts under one lock and hands the same deltas to the gauges, so ``waiting`` and
``busy`` are exact at any instant, readable from any thread (the watchdog, the off-loop
server), and sum over the loops of a process the way the metrics do.

The queue-wait and run histograms are observed on the pool thread when a job starts and
ends: the label children are looked up once per route, on the loop thread, at submission.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol

from .readings import PoolReading, RouteWait, idle_threads, route_label

QUEUED, RUNNING, DONE, DROPPED = 0, 1, 2, 3


class _Observe(Protocol):
    def observe(self, amount: float) -> None: ...


class _Gauge(Protocol):
    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


class _Labelled(Protocol):
    def labels(self, *values: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class HookSite:
    """Where a pool's hook sits: the loop it watches, the pool it counts into, how it names
    the submitting route (on the loop thread), and where its own errors go."""

    loop: asyncio.AbstractEventLoop
    pool: Pool
    route_of: Callable[[], str]
    on_error: Callable[[], None]


@dataclass(frozen=True, slots=True)
class PoolMetrics:
    """The metric objects the pools write (defined in ``stallwatch/metrics.py``)."""

    queue_wait: _Labelled
    """``stallwatch_executor_queue_wait_seconds{pool, route}``"""
    run: _Labelled
    """``stallwatch_executor_run_seconds{pool, route}``"""
    threads: _Labelled
    """``stallwatch_executor_threads{pool, state}``"""
    waiting: _Labelled
    """``stallwatch_executor_waiting{pool}``"""


class _Route:
    """One route's children and totals in one pool (totals under the pool's lock)."""

    __slots__ = ("jobs", "longest", "name", "run", "run_child", "wait", "wait_child")

    def __init__(self, name: str, wait_child: _Observe, run_child: _Observe) -> None:
        self.name = name
        self.wait_child = wait_child
        self.run_child = run_child
        self.jobs = 0
        self.wait = 0.0
        self.longest = 0.0
        self.run = 0.0


class Job:
    """The callable a pool thread runs in place of the app's: the app's own function, called
    with the same arguments in the same thread and context, its result or exception passed on
    unchanged; around it, two clock reads and the pool's counts."""

    __slots__ = ("func", "pool", "route", "state", "submitted")

    def __init__(self, pool: Pool, func: Callable[..., Any], route: _Route, now: float) -> None:
        self.pool = pool
        self.func = func
        self.route = route
        self.submitted = now
        self.state = QUEUED

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        pool = self.pool
        began = pool.started(self)
        try:
            return self.func(*args, **kwargs)
        finally:
            pool.finished(self, began)

    def __repr__(self) -> str:
        return f"<stallwatch {self.pool.name} pool job {self.func!r}>"

    def settle(self, _future: object = None) -> None:
        """The caller stopped waiting (loop thread): if the job never started, it never
        will, or will run unawaited; either way it no longer waits. A future's done callback."""
        if self.state == QUEUED:
            self.pool.dropped(self)


class Pool:
    """One pool of one loop: ``default`` or ``anyio``."""

    def __init__(
        self,
        name: str,
        metrics: PoolMetrics,
        on_error: Callable[[], None],
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        self.name = name
        self._metrics = metrics
        self._on_error = on_error
        self._clock = clock
        self._lock = threading.Lock()
        self.waiting = 0
        self.busy = 0
        self.capacity: int | None = None
        self._published_idle = 0
        self._closed = False
        self._busy_seconds = 0.0
        self._changed = clock()
        self._routes: dict[str, _Route] = {}
        self._waiting_gauge: _Gauge = metrics.waiting.labels(name)
        self._busy_gauge: _Gauge = metrics.threads.labels(name, "busy")
        self._idle_gauge: _Gauge = metrics.threads.labels(name, "idle")

    # -- the loop thread -----------------------------------------------------------------------

    def submit(self, func: Callable[..., Any], route: str, capacity: int | None) -> Job:
        """A job for ``func``, counted as waiting from now; call before handing it over, so
        that a thread that starts it at once finds it counted."""
        entry = self._routes.get(route)
        if entry is None:
            entry = self._route(route)
        job = Job(self, func, entry, self._clock())
        with self._lock:
            self.waiting += 1
            if capacity != self.capacity:
                self.capacity = capacity
            self._publish(1, 0)
        return job

    def dropped(self, job: Job) -> None:
        with self._lock:
            if job.state != QUEUED:
                return
            job.state = DROPPED
            self.waiting -= 1
            self._publish(-1, 0)

    def _route(self, route: str) -> _Route:
        name = route_label(route, self._routes)
        entry = self._routes.get(name)
        if entry is None:
            entry = _Route(
                name,
                self._metrics.queue_wait.labels(self.name, name),
                self._metrics.run.labels(self.name, name),
            )
            with self._lock:  # other threads read the routes (``routes()``)
                self._routes[name] = entry
        return entry

    # -- the pool threads ----------------------------------------------------------------------

    def started(self, job: Job) -> float:
        now = self._clock()
        try:
            route = job.route
            waited = now - job.submitted
            with self._lock:
                self._account(now)
                queued = job.state == QUEUED
                if queued:
                    self.waiting -= 1
                job.state = RUNNING
                self.busy += 1
                route.jobs += 1
                route.wait += waited
                if waited > route.longest:
                    route.longest = waited
                self._publish(-1 if queued else 0, 1)
            route.wait_child.observe(waited)
        except Exception:
            self._on_error()
        return now

    def finished(self, job: Job, began: float) -> None:
        try:
            now = self._clock()
            route = job.route
            with self._lock:
                self._account(now)
                job.state = DONE
                self.busy -= 1
                route.run += now - began
                self._publish(0, -1)
            route.run_child.observe(now - began)
        except Exception:
            self._on_error()

    # -- any thread ----------------------------------------------------------------------------

    def reading(self) -> PoolReading:
        with self._lock:
            return PoolReading(self.name, self.busy, self.waiting, self.capacity)

    def busy_seconds(self) -> float:
        """Seconds of pool threads running jobs since the pool was made (a thread running
        for two seconds adds two): the difference over a window over the window's length is
        the mean number of threads that ran in it."""
        with self._lock:
            return self._busy_seconds + self.busy * (self._clock() - self._changed)

    def routes(self) -> dict[str, RouteWait]:
        with self._lock:
            return {
                name: RouteWait(entry.jobs, entry.wait, entry.longest, entry.run)
                for name, entry in self._routes.items()
                if entry.jobs
            }

    def close(self) -> None:
        """Take this pool's share out of the gauges; jobs that end later change them no more
        (the gauges sum over loops, so each pool removes only what it added)."""
        with self._lock:
            if self._closed:
                return
            self._publish(-self.waiting, -self.busy, idle=0)
            self._closed = True

    # -- under the lock ------------------------------------------------------------------------

    def _account(self, now: float) -> None:
        self._busy_seconds += self.busy * (now - self._changed)
        self._changed = now

    def _publish(self, waiting: int, busy: int, idle: int | None = None) -> None:
        if self._closed:
            return
        if waiting:
            self._waiting_gauge.inc(waiting)
        if busy:
            self._busy_gauge.inc(busy)
        if idle is None:
            idle = idle_threads(self.capacity, self.busy) or 0
        if idle != self._published_idle:
            self._idle_gauge.inc(idle - self._published_idle)
            self._published_idle = idle
