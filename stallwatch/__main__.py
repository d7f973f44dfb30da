"""``python -m stallwatch``: block a real event loop in each way stallwatch tells apart, and
print what it reported, beside how long each block really took.

It doubles as a check of a machine: the probe in use, and how exact stall timing is there.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from .monitor import LoopMonitor
from .report.text import as_json, as_text


def _sleep() -> None:
    time.sleep(0.120)  # a blocking call in async code


def _cpu() -> None:
    end = time.perf_counter() + 0.080
    while time.perf_counter() < end:  # pure Python, holding the GIL
        pass


def _native() -> None:
    sum(range(8_000_000))  # one C call that never lets the GIL go


def _garbage() -> None:
    junk = [[i] for i in range(400_000)]
    gc.collect()
    del junk


def _sqlite(path: Path) -> Callable[[], None]:
    with sqlite3.connect(path) as db:
        db.execute("create table if not exists t (k integer, v text)")
        db.executemany("insert into t values (?, ?)", ((i, str(i) * 4) for i in range(600_000)))

    def query() -> None:
        with sqlite3.connect(path) as db:  # an unindexed scan: real SQLite work
            db.execute(
                "select count(*) from t a where a.v like '%9%9%9%' and a.k % 7 = 3"
            ).fetchone()
            db.execute("select max(length(v || k)) from t where v glob '*1*2*'").fetchone()

    return query


async def _run(output: str) -> int:
    registry = CollectorRegistry()
    with tempfile.TemporaryDirectory() as tmp:
        blockers: list[tuple[str, Callable[[], None]]] = [
            ("time.sleep", _sleep),
            ("sqlite3 scan", _sqlite(Path(tmp) / "demo.db")),
            ("Python CPU loop", _cpu),
            ("C call holding the GIL", _native),
            ("gc.collect", _garbage),
        ]
        async with LoopMonitor(registry=registry) as monitor:
            print(f"probe: {monitor.probe} (loop {type(monitor.loop).__module__})", file=sys.stderr)
            await asyncio.sleep(0.05)
            measured: list[tuple[str, float]] = []
            for name, block in blockers:
                began = time.perf_counter()
                block()
                measured.append((name, time.perf_counter() - began))
                await asyncio.sleep(0.1)
            deadline = time.monotonic() + 2
            # The watchdog thread records each stall just after it ends: give it a moment.
            while len(monitor.recent_stalls()) < len(blockers):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
            events = monitor.recent_stalls()
    if output == "json":
        print(as_json(events))
        return 0
    print(as_text(events))
    print()
    for (name, seconds), event in zip(measured, events, strict=False):
        error = (event.duration - seconds) * 1e3
        print(f"{name:<24} blocked {seconds * 1e3:7.1f} ms, reported {error:+.2f} ms off")
    return 0 if len(events) == len(blockers) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stallwatch", description=__doc__)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--output", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        return uvloop.run(_run(args.output))
    return asyncio.run(_run(args.output))


if __name__ == "__main__":
    sys.exit(main())
