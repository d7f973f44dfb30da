"""The demo's SQLite cache: one real file, one connection per thread, and the two ways to read it.

Read ``read_blocking`` and ``read_in_executor`` side by side: they are the bug and the fix.
A lookup costs about 2 ms because the table has no index on ``key``, so every read scans all
seeded rows inside SQLite: real work, the kind that hides in a cache layer, not a sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from time import perf_counter
from typing import Literal, get_args

Mode = Literal["blocking", "executor"]
MODES: tuple[Mode, ...] = get_args(Mode)
"""``blocking``: ``read_blocking`` straight from the route; ``executor``: ``read_in_executor``."""
DEFAULT_EXECUTOR_THREADS = 1
"""One pool thread: on a single core more threads only fight the loop for the CPU."""

READ = "SELECT value FROM cache WHERE key = ?"
"""No index on ``key`` and no ``LIMIT``: every read scans the whole table, whichever key."""

DEFAULT_SEED_ROWS = 100_000
"""About 2 ms per read on a 2020s x86 core; ``--seed-rows`` scales it (the cost is linear)."""


def seeded_value(key: str) -> str:
    """What ``/cache/{key}`` returns for a seeded key: ``key-7`` holds ``value-7``."""
    return "value-" + key.removeprefix("key-")


class SqliteCache:
    """A seeded SQLite file plus the per-thread connections and the executor that read it."""

    def __init__(
        self,
        path: str | None = None,
        *,
        seed_rows: int = DEFAULT_SEED_ROWS,
        executor_threads: int = 1,
    ) -> None:
        if not isinstance(seed_rows, int) or seed_rows < 1:
            raise ValueError(f"seed_rows must be a positive integer, got {seed_rows!r}")
        if not isinstance(executor_threads, int) or executor_threads < 1:
            raise ValueError(
                f"executor_threads must be a positive integer, got {executor_threads!r}"
            )
        self._tempdir: str | None = None
        self.path = path or ""
        """The file; with no path given, a temporary one chosen by ``open()``."""
        self._temporary = path is None
        self.seed_rows = seed_rows
        self.executor_threads = executor_threads
        self.pool: ThreadPoolExecutor | None = None
        self.read_seconds = 0.0
        """The median cost of one read, measured at startup."""
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create and seed the file (unless another process did), start the pool, time a read."""
        if self._temporary:
            self._tempdir = tempfile.mkdtemp(prefix="stallwatch-demo-")
            self.path = os.path.join(self._tempdir, "cache.sqlite3")
        self._seed()
        self.pool = ThreadPoolExecutor(self.executor_threads, thread_name_prefix="demo-sqlite")
        self.read_seconds = self._time_reads()

    def close(self) -> None:
        """Stop the pool, then close every thread's connection and remove a temporary file."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None
            self.path = ""

    def connection(self) -> sqlite3.Connection:
        """This thread's own connection, opened on first use.

        A sqlite3 connection belongs to the thread that uses it, so the loop thread and each
        pool thread get one of their own and never share it. ``check_same_thread=False`` is
        only there so that ``close()`` can close them all once the pool has stopped.
        """
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, check_same_thread=False)
            # Room for the whole table in this connection's page cache: a read is CPU work in
            # SQLite, not a trip through the OS for every page.
            connection.execute("PRAGMA cache_size = -65536")
            with self._lock:
                self._connections.append(connection)
            self._local.connection = connection
        return connection

    def _seed(self) -> None:
        # Several workers may share one file: the first to take the write lock seeds it, the
        # others find the rows there and leave them.
        with closing(sqlite3.connect(self.path, timeout=60.0, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS cache (key TEXT NOT NULL, value TEXT NOT NULL)"
                )
                (count,) = db.execute("SELECT count(*) FROM cache").fetchone()
                if count == 0:
                    db.executemany(
                        "INSERT INTO cache (key, value) VALUES (?, ?)",
                        ((f"key-{i}", f"value-{i}") for i in range(self.seed_rows)),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _time_reads(self, count: int = 15) -> float:
        read_blocking(self, "key-0")  # the first read fills the page cache: not a typical one
        timings = []
        for i in range(count):
            began = perf_counter()
            read_blocking(self, f"key-{i}")
            timings.append(perf_counter() - began)
        timings.sort()
        return timings[len(timings) // 2]


# -- the two reads: the bug and the fix ---------------------------------------------------------


def read_blocking(cache: SqliteCache, key: str) -> str | None:
    """One cache read: a synchronous SQLite query of about 2 ms.

    Called straight from an ``async def`` (blocking mode), it holds the event loop for the
    whole query: no other request runs, no socket is read, no timer fires. Forty such reads
    queued behind each other freeze every other route for 80 ms, although no single one is
    slow. This line is what stallwatch names as the culprit.
    """
    row = cache.connection().execute(READ, (key,)).fetchone()
    return None if row is None else str(row[0])


async def read_in_executor(cache: SqliteCache, key: str) -> str | None:
    """The fix: the same read on a pool thread, awaited, so the loop serves others meanwhile.

    It is no free lunch: the pool's threads compete with the loop thread for the CPU (and for
    the GIL in the Python parts of a read). With more threads than cores the loop waits for a
    CPU instead of for SQLite; ``--executor-threads`` sets the pool size to show the trade-off.
    """
    loop = asyncio.get_running_loop()
    # The loop's default executor is the cache's pool (set at startup), as an app's would be.
    return await loop.run_in_executor(None, read_blocking, cache, key)
