"""What the middleware test apps share: the settings, the blocking calls and the shared state.

Each test starts its own uvicorn process, so everything a test varies (the stall threshold,
the off-loop metrics port, where the SQLite file and the shutdown marker go) comes from the
environment. The blocking calls live here, one statement per call, so a test can find the
file and line a stall must name by reading this module's source instead of hard-coding them.
Each blocking call times itself: tests compare what stallwatch reports with what really
happened, not with what was asked for.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry

import stallwatch

ROWS = 10_000
"""Rows in the SQLite table: a scan of all pairs would take seconds, so any read up to that
length can be asked for."""

SCAN = (
    "SELECT count(*) FROM kv AS a, kv AS b"
    " WHERE a.rowid <= ? AND b.rowid <= ? AND (a.v * b.v) % 7919 = -1"
)
"""A read that visits (first x second parameter) pairs of rows; the modulo keeps SQLite from
building an automatic index that would make it cost nothing."""


@dataclass
class Settings:
    stall_threshold: float
    metrics_port: int | None
    state_dir: Path
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)


def settings() -> Settings:
    port = os.environ.get("SW_METRICS_PORT")
    state_dir = os.environ.get("SW_STATE_DIR") or tempfile.mkdtemp(prefix="stallwatch-app-")
    return Settings(
        stall_threshold=float(os.environ.get("SW_STALL_THRESHOLD", "0.1")),
        metrics_port=int(port) if port else None,
        state_dir=Path(state_dir),
    )


class State:
    """Counters the tests poll to know when the server is where they want it."""

    def __init__(self) -> None:
        self.waiting = 0  # requests of /items/{item_id} inside their await
        self.background_done = 0
        self.streams_cancelled = 0


# -- the blocking calls: one statement each, found by tests through ``blocking_line`` --------


def block_sleep(seconds: float) -> float:
    began = perf_counter()
    time.sleep(seconds)  # blocks: sleep
    return perf_counter() - began


def block_cpu(seconds: float) -> float:
    began = perf_counter()
    while perf_counter() - began < seconds:
        _spin(20_000)
    return perf_counter() - began


def _spin(n: int) -> int:
    return sum(i * i for i in range(n))  # blocks: cpu


class Database:
    """A real SQLite file and a read calibrated to take a given time on this machine."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, check_same_thread=False)
        if self.conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'kv'").fetchone()[0]:
            self.conn.execute("DROP TABLE kv")
        self.conn.execute("CREATE TABLE kv (k TEXT, v INTEGER)")
        self.conn.executemany(
            "INSERT INTO kv VALUES (?, ?)", ((f"key-{i}", i * 7 + 3) for i in range(ROWS))
        )
        self.conn.commit()
        self.per_pair = self._calibrate()
        """Seconds one pair of rows costs, from the fastest of a few reads at start-up."""

    def _calibrate(self) -> float:
        side = 300
        best = float("inf")
        for _ in range(7):
            began = perf_counter()
            self.conn.execute(SCAN, (side, side)).fetchone()
            best = min(best, perf_counter() - began)
        return best / (side * side)

    def sides_for(self, seconds: float) -> tuple[int, int]:
        """Row limits of ``a`` and ``b`` whose product of pairs takes about ``seconds``."""
        pairs = max(1.0, seconds / self.per_pair)
        side = max(1, min(ROWS, math.isqrt(round(pairs))))
        return side, max(1, min(ROWS, round(pairs / side)))

    def read(self, seconds: float) -> float:
        """Block the calling thread in SQLite for about ``seconds``; returns the real time."""
        sides = self.sides_for(seconds)
        began = perf_counter()
        self.conn.execute(SCAN, sides).fetchone()  # blocks: sqlite
        return perf_counter() - began


def blocking_line(marker: str) -> tuple[str, int]:
    """File and line of the statement tagged ``# blocks: <marker>`` in this module."""
    source = Path(__file__).read_text().splitlines()
    for number, line in enumerate(source, start=1):
        if line.rstrip().endswith(f"# blocks: {marker}"):
            return __file__, number
    raise LookupError(marker)


# -- what the routes do, framework aside ---------------------------------------------------


async def health_check() -> None:
    """What a real ``/ping`` does: await a dependency once (here, nothing, for no time).

    A request that awaits is on the loop across an iteration, so it waits behind whatever
    the loop runs in between whichever order the kernel handed over the ready sockets; a
    request answered in one step may happen to run first and wait for nothing.
    """
    await asyncio.sleep(0)


async def wait_item(state: State, delay: float) -> None:
    state.waiting += 1
    try:
        await asyncio.sleep(delay)
    finally:
        state.waiting -= 1


def stalls() -> list[dict[str, object]]:
    monitor = stallwatch.get_monitor()
    return [] if monitor is None else [event.to_dict() for event in monitor.recent_stalls()]


def probe() -> str:
    monitor = stallwatch.get_monitor()
    return "none" if monitor is None else monitor.probe


def blockers(database: Database) -> dict[str, Any]:
    """The blocking kinds by name, each taking the seconds to block for."""
    return {"sleep": block_sleep, "cpu": block_cpu, "sqlite": database.read}


def mark_shutdown(settings: Settings) -> None:
    (settings.state_dir / "shutdown").write_text("ran")


async def chunks(count: int) -> AsyncIterator[str]:
    for i in range(count):
        await asyncio.sleep(0.005)
        yield f"chunk {i}\n"


async def events(count: int) -> AsyncIterator[str]:
    for i in range(count):
        await asyncio.sleep(0.005)
        yield f"id: {i}\ndata: event {i}\n\n"


async def endless(state: State, limit: int = 3000) -> AsyncIterator[bytes]:
    """A stream that outlives its client: 64 KiB every 10 ms, 30 s at most."""
    try:
        for _ in range(limit):
            yield b"x" * 65536
            await asyncio.sleep(0.01)
    except BaseException:
        state.streams_cancelled += 1
        raise


async def background_job(state: State) -> None:
    await asyncio.sleep(0.05)
    state.background_done += 1
