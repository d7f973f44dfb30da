"""The thread pools a loop hands blocking work to: asyncio's default executor and anyio's
default thread limiter, observed without changing how the work runs.

Moving a blocking call off the loop (``run_in_executor``, ``asyncio.to_thread``, a plain
``def`` endpoint) is the usual fix for a blocked loop, and where the next incident starts:
work queues behind busy threads, or too many threads take the GIL and the CPU from the loop
(the ``starvation`` cause). ``PoolWatch`` counts, per pool, how long work waited to start
and ran (by the route that submitted it, ``<background>`` outside requests), how many
threads run it and how much waits, exactly and from any thread.

``executor.py`` and ``limiter.py`` are the two hook points, ``state.py`` the counts,
``readings.py`` the rules they follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..events import BACKGROUND
from ..request.tasks import CURRENT
from .executor import ExecutorHook
from .limiter import LimiterHook
from .readings import ANYIO, DEFAULT, POOLS, PoolReading, RouteWait, threads_during
from .state import HookSite, Pool, PoolMetrics

__all__ = [
    "ANYIO",
    "DEFAULT",
    "POOLS",
    "PoolMetrics",
    "PoolReading",
    "PoolWatch",
    "RouteWait",
    "current_route",
    "threads_during",
]


def current_route() -> str:
    """The route of the request whose context submits work (loop thread): read where the
    work is submitted, since the pool thread runs outside the request's step."""
    span = CURRENT.get()
    return BACKGROUND if span is None else span.route_label()


class PoolWatch:
    """Both pools of one loop. ``install`` and ``uninstall`` on the loop thread; readings
    from any thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        metrics: PoolMetrics,
        on_error: Callable[[], None],
        *,
        route_of: Callable[[], str] = current_route,
    ) -> None:
        self.pools = {name: Pool(name, metrics, on_error) for name in POOLS}
        self._executor = ExecutorHook(HookSite(loop, self.pools[DEFAULT], route_of, on_error))
        self._limiter = LimiterHook(HookSite(loop, self.pools[ANYIO], route_of, on_error))
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        self._executor.install()
        self._limiter.install()

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        self._executor.uninstall()
        self._limiter.uninstall()
        for pool in self.pools.values():
            pool.close()

    def readings(self) -> tuple[PoolReading, ...]:
        return tuple(pool.reading() for pool in self.pools.values())

    def busy_seconds(self) -> float:
        """Seconds of pool threads running work, both pools together (see ``Pool``)."""
        return sum(pool.busy_seconds() for pool in self.pools.values())

    def routes(self) -> dict[str, dict[str, RouteWait]]:
        """Per pool, per route: jobs, their wait and run time since the watch began."""
        return {name: pool.routes() for name, pool in self.pools.items()}
