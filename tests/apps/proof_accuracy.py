"""The app ``benchmarks/accuracy.py`` blocks: stallwatch and every peer watch the same loop.

One FastAPI app, served by real uvicorn, watched by one tool per server (``ACC_TOOL``), so
that no tool's own work (a debug-mode log record formats the whole task) lands inside another
tool's measurement: ``stallwatch`` (``StallwatchMiddleware``), ``loopguard`` (fastapi-loopguard
in ``log`` mode with ``dev_mode``: the ``x-blocking-*`` headers), ``asyncio_debug`` (debug mode,
``slow_callback_duration``, its "Executing ... took N seconds" log records) and ``aiodebug``
(``log_slow_callbacks``, which patches ``asyncio.events.Handle``; uvloop's handles are its own,
so aiodebug sees nothing there).

``GET /block/{kind}?ms=N`` blocks the loop in one of six ways and returns the block measured
around the blocking statement itself (``perf_counter``) with its wall-clock window, file and
line. ``GET /report?start=&end=`` returns what each tool recorded that overlaps that window.
Settings come from the environment: ``ACC_TOOL`` and ``ACC_THRESHOLD`` (seconds, the same for
every tool that takes one).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sqlite3
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from time import perf_counter
from typing import Any

from fastapi import FastAPI

import stallwatch

THRESHOLD = float(os.environ.get("ACC_THRESHOLD", "0.004"))
TOOL = os.environ.get("ACC_TOOL", "stallwatch")
HOGS = 3
"""Executor threads doing Python work for a starvation block: the loop thread gets about a
quarter of the GIL."""

_MARK = "# block: "


def _marked_lines() -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, text in enumerate(Path(__file__).read_text().splitlines(), start=1):
        _, mark, kind = text.rpartition(_MARK)
        if mark and kind.isidentifier():
            lines[kind] = number
    return lines


# -- the six ways to block -------------------------------------------------------------------


def _fastest(run: Callable[[], object], times: int = 3) -> float:
    best = float("inf")
    for _ in range(times):
        started = perf_counter()
        run()
        best = min(best, perf_counter() - started)
    return best


def block_sleep(seconds: float) -> None:
    time.sleep(seconds)  # block: sleep


def block_cpu(seconds: float) -> None:
    deadline = perf_counter() + seconds
    while perf_counter() < deadline:  # block: cpu
        pass


def native_items(seconds: float) -> range:
    per_item = _fastest(lambda: sum(range(100_000))) / 100_000
    return range(max(1, round(seconds / per_item)))


def block_native(items: range) -> None:
    sum(items)  # block: native


class Scan:
    """An unindexed self-join on a real SQLite file; ``LIMIT`` on the outer side sets the length."""

    ROWS = 40_000
    SQL = (
        "SELECT count(*) FROM (SELECT v FROM item ORDER BY id LIMIT ?) AS a "
        "JOIN item AS b ON b.v = a.v"
    )

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False)
        with self.db:
            self.db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, v INTEGER)")
            self.db.executemany(
                "INSERT INTO item (v) VALUES (?)",
                [((i * 7919) % 100_003,) for i in range(self.ROWS)],
            )
        self.db.execute("PRAGMA automatic_index = OFF")  # or SQLite indexes it and is fast

    def rows_for(self, seconds: float) -> int:
        per_row = _fastest(lambda: self.db.execute(self.SQL, (8,)).fetchone()) / 8
        return min(self.ROWS, max(1, round(seconds / per_row)))

    def block(self, rows: int) -> None:
        self.db.execute(self.SQL, (rows,)).fetchone()  # block: sqlite


class Garbage:
    """A live set of containers sized so that a full collection lasts about the target."""

    def __init__(self) -> None:
        self.live: list[list[None]] = []

    def size_for(self, seconds: float) -> None:
        self.live.clear()
        base = _fastest(gc.collect, 2)
        probe = 500_000
        self.live.extend([None] for _ in range(probe))
        per_object = max(1e-9, (_fastest(gc.collect, 2) - base) / probe)
        wanted = max(0, round((seconds - base) / per_object))
        if wanted < len(self.live):
            del self.live[wanted:]
        else:
            self.live.extend([None] for _ in range(wanted - len(self.live)))

    @staticmethod
    def block() -> None:
        gc.collect()  # block: gc


def _hog(deadline: float) -> None:
    spins = 0
    while perf_counter() < deadline:
        for _ in range(1_000):
            spins += 1


def block_starved(seconds: float) -> None:
    # Short Python steps on the loop thread while the executor's threads hold the GIL.
    deadline = perf_counter() + seconds
    while perf_counter() < deadline:  # block: starvation
        pass


# -- what the peers record -------------------------------------------------------------------


class Records(logging.Handler):
    """asyncio debug mode's slow-callback log records: (start, end, text) in wall-clock time."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: deque[tuple[float, float, str]] = deque(maxlen=2000)

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if record.msg == "Executing %s took %.3f seconds" and isinstance(args, tuple):
            took = float(args[1])
            self.seen.append((record.created - took, record.created, str(args[0])))


DEBUG_RECORDS = Records()
AIODEBUG: deque[tuple[float, float, str]] = deque(maxlen=2000)


def _on_slow_callback(name: str, took: float) -> None:
    now = time.time()
    AIODEBUG.append((now - took, now, name))


def _enable_debug(loop: asyncio.AbstractEventLoop) -> None:
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(DEBUG_RECORDS)
    asyncio_logger.propagate = False
    loop.set_debug(True)
    loop.slow_callback_duration = THRESHOLD


def _overlap(start: float, end: float, a: float, b: float) -> float:
    return max(0.0, min(end, b) - max(start, a))


def _best(
    records: list[tuple[float, float, str]], start: float, end: float
) -> dict[str, Any] | None:
    best = max(records, key=lambda r: _overlap(start, end, r[0], r[1]), default=None)
    if best is None or _overlap(start, end, best[0], best[1]) < 0.5 * (end - start):
        return None
    return {"duration": best[1] - best[0], "text": best[2][:600]}


# -- the app ---------------------------------------------------------------------------------

LINES = _marked_lines()
STATE: dict[str, Any] = {}


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    folder = Path(tempfile.mkdtemp(prefix="stallwatch-accuracy-"))
    STATE["scan"] = Scan(folder / "scan.sqlite")
    STATE["garbage"] = Garbage()
    STATE["pool"] = ThreadPoolExecutor(HOGS, thread_name_prefix="hog")
    if TOOL == "asyncio_debug":
        _enable_debug(asyncio.get_running_loop())
    elif TOOL == "aiodebug":
        from aiodebug import log_slow_callbacks

        log_slow_callbacks.enable(THRESHOLD, on_slow_callback=_on_slow_callback)
    yield


app = FastAPI(lifespan=_lifespan)
if TOOL == "stallwatch":
    app.add_middleware(stallwatch.StallwatchMiddleware, stall_threshold=THRESHOLD, floor=0.001)
elif TOOL == "loopguard":
    from fastapi_loopguard import LoopGuardConfig, LoopGuardMiddleware

    app.add_middleware(
        LoopGuardMiddleware,
        config=LoopGuardConfig(
            enforcement_mode="log",
            dev_mode=True,
            log_blocking_events=False,
            monitor_interval_ms=2.0,
            fallback_threshold_ms=THRESHOLD * 1e3,
            cumulative_blocking_enabled=False,
        ),
    )


@app.get("/ping")
async def ping() -> dict[str, bool]:
    await asyncio.sleep(0)
    return {"ok": True}


@app.get("/block/{kind}")
async def block(kind: str, ms: float) -> dict[str, Any]:
    seconds = ms / 1e3
    run: Callable[[], None]
    # Whatever must be sized for the machine's speed right now is sized in an earlier step.
    if kind == "sleep":
        run = lambda: block_sleep(seconds)  # noqa: E731
    elif kind == "cpu":
        run = lambda: block_cpu(seconds)  # noqa: E731
    elif kind == "native":
        items = native_items(seconds)
        run = lambda: block_native(items)  # noqa: E731
    elif kind == "sqlite":
        rows = STATE["scan"].rows_for(seconds)
        run = lambda: STATE["scan"].block(rows)  # noqa: E731
    elif kind == "gc":
        STATE["garbage"].size_for(seconds)
        run = Garbage.block
    elif kind == "starvation":
        run = lambda: block_starved(seconds)  # noqa: E731
    else:
        raise ValueError(kind)
    await asyncio.sleep(0.02)  # the sizing was a stall of its own: keep it apart from the block
    hogs: list[asyncio.Future[None]] = []
    if kind == "starvation":
        loop = asyncio.get_running_loop()
        until = perf_counter() + seconds + 0.002
        hogs = [loop.run_in_executor(STATE["pool"], _hog, until) for _ in range(HOGS)]
    wall = time.time()
    started = perf_counter()
    run()
    took = perf_counter() - started
    for hog in hogs:
        await hog
    return {
        "seconds": took,
        "start": wall,
        "end": wall + took,
        "line": f"{__file__}:{LINES[kind]}",
    }


@app.get("/report")
async def report(start: float, end: float) -> dict[str, Any]:
    monitor = stallwatch.get_monitor()
    events = monitor.recent_stalls() if monitor is not None else []
    best = max(
        events,
        key=lambda e: _overlap(start, end, e.started_at, e.started_at + e.duration),
        default=None,
    )
    found: dict[str, Any] = {"probe": monitor.probe if monitor is not None else "none"}
    if best is not None and _overlap(
        start, end, best.started_at, best.started_at + best.duration
    ) >= 0.5 * (end - start):
        found["stallwatch"] = best.to_dict()
    found["asyncio_debug"] = _best(list(DEBUG_RECORDS.seen), start, end)
    found["aiodebug"] = _best(list(AIODEBUG), start, end)
    return found
