"""Open-loop HTTP load: requests leave on a fixed schedule, whatever the server is doing.

A closed-loop tool (wrk, or N workers each waiting for its answer) sends less while the
server stalls, so the stall hides from the very numbers meant to show it (coordinated
omission). Here request ``i`` of a route is *due* at ``start + offsets[i]``, a schedule drawn
before the step (``arrivals.py``); its latency is measured from that due time, so a request
that could only leave late, or waited for a connection, is charged for the wait.

``/ping`` is probed from a separate, lightly loaded process (``ProbeProcess``), so its
latencies are not skewed by the generator's own busy loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from time import monotonic
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")


@dataclass(frozen=True)
class RouteLoad:
    """One route's share of the traffic: its label, how to build the i-th path, its mean rate,
    and when each request is due, in seconds from the step's start (see ``arrivals.py``)."""

    route: str
    path: Callable[[int], str]
    rate: float
    offsets: Sequence[float]


@dataclass
class RouteResult:
    """What the client saw of one route during one step."""

    route: str
    rate: float
    latencies: list[float] = field(default_factory=list)
    """Seconds from each request's due time to its answer (or to the step's end if none)."""
    sent: int = 0
    ok: int = 0
    errors: int = 0
    unfinished: int = 0
    send_lag: float = 0.0
    """The latest any request left after its due time: large values mean the generator (or
    the machine), not the server, held requests back. Timers alone add up to about 1 ms."""
    send_lag_total: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "rate": self.rate,
            "latencies": self.latencies,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "unfinished": self.unfinished,
            "send_lag": self.send_lag,
            "send_lag_total": self.send_lag_total,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RouteResult:
        return cls(**data)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run the generator's loop on uvloop where it is installed: the client must stay light."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


def session(connections: int) -> aiohttp.ClientSession:
    """A client with a pool big enough that requests never queue inside the client.

    Idle connections are dropped after 2 s, before uvicorn drops them (5 s by default): a
    request written to a connection the server is closing fails for no fault of the server.
    """
    connector = aiohttp.TCPConnector(
        limit=connections, limit_per_host=connections, keepalive_timeout=2.0
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None), raise_for_status=False
    )


def control_session() -> aiohttp.ClientSession:
    """For the few requests around the load (mode, metrics, stalls): a new connection each."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def _one(client: aiohttp.ClientSession, url: str, due: float, result: RouteResult) -> None:
    try:
        async with client.get(url) as response:
            await response.read()
            good = response.status == 200
    except asyncio.CancelledError:
        # Still unanswered when the step gave up on it: its latency is at least this long.
        result.unfinished += 1
        result.latencies.append(monotonic() - due)
        raise
    except (aiohttp.ClientError, OSError):
        good = False
    result.latencies.append(monotonic() - due)
    if good:
        result.ok += 1
    else:
        result.errors += 1


async def offer(
    client: aiohttp.ClientSession,
    base_url: str,
    loads: Sequence[RouteLoad],
    *,
    start: float,
    duration: float,
    drain: float,
    progress: Callable[[float, list[RouteResult], int], None] | None = None,
) -> list[RouteResult]:
    """Send every route's requests on schedule from ``start`` for ``duration`` seconds, then
    wait up to ``drain`` seconds for the answers still owed.

    Times are ``time.monotonic()``, one clock for every process of the machine, so the probe
    process keeps the same schedule.
    """
    loop = asyncio.get_running_loop()
    results = [RouteResult(load.route, load.rate) for load in loads]
    in_flight: set[asyncio.Task[None]] = set()

    async def schedule(load: RouteLoad, result: RouteResult) -> None:
        for i, offset in enumerate(load.offsets):
            due = start + offset
            delay = due - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            late = monotonic() - due
            result.send_lag = max(result.send_lag, late)
            result.send_lag_total += late
            task = loop.create_task(_one(client, base_url + load.path(i), due, result))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            result.sent += 1

    senders = [loop.create_task(schedule(load, r)) for load, r in zip(loads, results, strict=True)]
    end = start + duration
    while monotonic() < end + drain and (in_flight or not all(s.done() for s in senders)):
        if progress is not None:
            progress(monotonic() - start, results, len(in_flight))
        await asyncio.sleep(0.2)
    for task in [*senders, *in_flight]:
        task.cancel()
    await asyncio.gather(*senders, *in_flight, return_exceptions=True)
    for sender in senders:
        with contextlib.suppress(asyncio.CancelledError):
            sender.result()
    return results


# -- the probe: a separate, light process ------------------------------------------------------


def constant(path: str) -> Callable[[int], str]:
    """The same path for every request."""
    return lambda _: path


def _probe_main(conn: Connection, cpus: set[int] | None, connections: int) -> None:
    """The probe process: runs one schedule per request until told to stop."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)

    async def serve() -> None:
        async with session(connections) as client:
            while True:
                command = await asyncio.to_thread(conn.recv)
                if command is None:
                    return
                base_url, route, path, rate, offsets, start, duration, drain = command
                load = RouteLoad(route, constant(path), rate, offsets)
                [result] = await offer(
                    client, base_url, [load], start=start, duration=duration, drain=drain
                )
                conn.send(result.to_wire())

    run(serve())


class ProbeProcess:
    """Probes one fixed path (``/ping``) on a given schedule from a process of its own."""

    def __init__(self, cpus: set[int] | None = None, connections: int = 256) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_probe_main,
            args=(child, cpus, connections),
            name="stallwatch-demo-probe",
            daemon=True,
        )
        self._process.start()
        child.close()

    def start(
        self,
        base_url: str,
        route: str,
        path: str,
        rate: float,
        offsets: Sequence[float],
        *,
        start: float,
        duration: float,
        drain: float,
    ) -> None:
        self._conn.send((base_url, route, path, rate, list(offsets), start, duration, drain))

    async def result(self) -> RouteResult:
        data = await asyncio.to_thread(self._conn.recv)
        return RouteResult.from_wire(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._conn.close()
