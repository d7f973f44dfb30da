"""Ways to block an event loop, each timed by the test right around the one call that blocks.

Call a blocker from a coroutine, on the loop thread. It returns a ``Block``: the seconds
``perf_counter`` measured around the blocking statement (the truth a stall's duration is held
to) and the file and line of that statement, which the sampled stack must name. The line is
found from the marker comment on it, so no test hard-codes a line number.

The four kinds the monitor must tell apart:

- ``sleep``: ``time.sleep``, which releases the GIL: the watchdog samples freely.
- ``sqlite``: a slow query on a real SQLite file; ``sqlite3`` releases the GIL while it steps.
- ``cpu``: a pure-Python loop; it keeps the GIL but the interpreter hands it over every switch
  interval, so the watchdog still samples it.
- ``native``: ``sum(range(n))``, one C call that never lets the GIL go: no stack can be taken
  until it returns, and the event must say so.

And ``gc``: a full collection over many live containers, a pause that is nobody's code.
"""

from __future__ import annotations

import gc
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Literal

Kind = Literal["sleep", "sqlite", "cpu", "native", "gc"]
KINDS: tuple[Kind, ...] = ("sleep", "sqlite", "cpu", "native")
SAMPLED: frozenset[Kind] = frozenset({"sleep", "sqlite", "cpu"})
"""Kinds during which the GIL is free often enough for the watchdog to take the stack."""

_MARK = "# blocks: "


@dataclass(frozen=True)
class Block:
    kind: Kind
    seconds: float
    """How long the blocking statement ran, measured around it with ``perf_counter``."""
    filename: str
    lineno: int
    """The line of the blocking statement: the top user frame of a sampled stall."""
    ended_at: float
    """Wall-clock end (``time.time()``), to find the stall that covers the block."""


def _marked_lines() -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, text in enumerate(Path(__file__).read_text().splitlines(), start=1):
        _, mark, kind = text.rpartition(_MARK)
        if mark and kind.isidentifier():
            lines[kind] = number
    return lines


def line_of(kind: Kind) -> int:
    """The line that carries ``# blocks: <kind>`` in this file."""
    return _LINES[kind]


def _block(kind: Kind, seconds: float) -> Block:
    # Nothing slow here: this runs inside the stall, after the block was measured.
    return Block(kind, seconds, __file__, _LINES[kind], time.time())


def sleep(seconds: float) -> Block:
    started = perf_counter()
    time.sleep(seconds)  # blocks: sleep
    return _block("sleep", perf_counter() - started)


def spin(seconds: float) -> Block:
    started = perf_counter()
    deadline = started + seconds
    # The interpreter hands the GIL over at the call and the jump, both on this line.
    while perf_counter() < deadline:  # blocks: cpu
        pass
    return _block("cpu", perf_counter() - started)


def collect_garbage() -> Block:
    """A full collection; it lasts as long as there are live containers to traverse."""
    started = perf_counter()
    gc.collect()  # blocks: gc
    return _block("gc", perf_counter() - started)


def fastest(run: Callable[[], object], times: int = 3) -> float:
    """The fastest of a few timed runs: the least disturbed reading on a shared machine."""
    best = float("inf")
    for _ in range(times):
        started = perf_counter()
        run()
        best = min(best, perf_counter() - started)
    return best


class NativeSum:
    """``sum(range(n))``, ``n`` calibrated just before each block so that it lasts the target.

    Calibrate in an earlier step of the loop than the block (``prepare``), right before it:
    the machine's load changes from one second to the next, and a block that came out much
    shorter than its target could fall under the stall threshold.
    """

    PROBE = 100_000

    def prepare(self, seconds: float) -> Callable[[], Block]:
        per_item = fastest(lambda: sum(range(self.PROBE))) / self.PROBE
        items = range(max(1, round(seconds / per_item)))
        return lambda: self._run(items)

    @staticmethod
    def _run(items: range) -> Block:
        started = perf_counter()
        sum(items)  # blocks: native
        return _block("native", perf_counter() - started)


class SlowQuery:
    """An unindexed join on a real SQLite file: every outer row scans the whole table.

    The cost is linear in the number of outer rows, so a short trial query gives the rate
    (``prepare``, as for ``NativeSum``) and ``LIMIT`` sets the length of the block.
    """

    ROWS = 12_000
    TRIAL = 8
    SQL = (
        "SELECT count(*) FROM (SELECT v FROM item ORDER BY id LIMIT ?) AS a "
        "JOIN item AS b ON b.v = a.v"
    )

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, check_same_thread=False)
        with self.connection:
            self.connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, v INTEGER)")
            self.connection.executemany(
                "INSERT INTO item (v) VALUES (?)",
                [((i * 7919) % 100_003,) for i in range(self.ROWS)],
            )
        # SQLite would otherwise build a transient index and the scan would not be slow.
        self.connection.execute("PRAGMA automatic_index = OFF")

    def close(self) -> None:
        self.connection.close()

    def prepare(self, seconds: float) -> Callable[[], Block]:
        trial = self.TRIAL
        per_row = fastest(lambda: self.connection.execute(self.SQL, (trial,)).fetchone()) / trial
        rows = max(1, round(seconds / per_row))
        if rows > self.ROWS:
            raise ValueError(f"{seconds}s needs {rows} outer rows; the table has {self.ROWS}")
        return lambda: self._run(rows)

    def _run(self, rows: int) -> Block:
        execute = self.connection.execute
        started = perf_counter()
        execute(self.SQL, (rows,)).fetchone()  # blocks: sqlite
        return _block("sqlite", perf_counter() - started)


_LINES = _marked_lines()
"""Read once at import: a stall also times what runs after the block, so nothing slow may."""
