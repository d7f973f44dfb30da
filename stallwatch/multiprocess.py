"""Many workers, one scrape: prometheus-client's multiprocess mode, with dead workers' files
folded into an archive so a restarted worker neither loses nor double-counts.

In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) every process writes its values to
``<type>_<pid>.db`` files and a scrape adds them up. When a worker dies its counter and
histogram files must keep counting (or every total drops, and Prometheus reads a reset),
but they cannot stay forever either: each restart would leave one more file per type, and a
pid reused by a later worker would pick up a stranger's values. prometheus-client's
``mark_process_dead`` only removes the dead pid's live gauges, and ``uvicorn --workers`` has
no ``child_exit`` hook to call it from. So stallwatch does the bookkeeping itself:

- every worker runs a cleanup when it starts and then every few seconds from a daemon
  thread (``start_cleanup``); gunicorn users may also call it from ``child_exit``;
- a cleanup finds the pids that own files but no longer run, removes their live gauges
  (``mark_process_dead``), and adds their counters, histograms and summaries into one
  ``<type>_archive.db`` file per type, then deletes their files;
- the swap happens under an exclusive ``flock`` on ``.stallwatch.lock`` in the directory,
  and ``MultiProcessCollector`` below takes the same lock shared while it reads, so a
  scrape sees either the dead pid's file or the archive that holds it, never both or none;
- a small journal makes the swap safe against a crash of the process doing it: the archive
  is replaced first (the commit point), the sources deleted after, and a cleanup that finds
  a journal either rolls the swap back (archive not replaced yet) or finishes it.

Non-live gauges of dead pids (modes ``all``, ``min``, ``max``, ``sum``, ``mostrecent``) are
left as prometheus-client leaves them: their last value is the documented meaning.

The directory must belong to one host (one pid namespace): liveness is ``kill(pid, 0)``.
The lock is POSIX ``flock``; where ``fcntl`` is missing (Windows) nothing is merged.

This module holds the lock, the collector that reads under it, and when cleanups run; the
files themselves (whose each is, whether its pid runs, the journaled swap) are read and
written in ``worker_files.py``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector as _PrometheusCollector
from prometheus_client.multiprocess import mark_process_dead

from .worker_files import (
    ARCHIVE_PID,
    ARCHIVED_TYPES,
    JOURNAL_NAME,
    TMP_SUFFIX,
    archived_already,
    fold,
    is_alive,
    owners,
    recover,
)

try:
    import fcntl

    FLOCK = True
except ImportError:  # pragma: no cover - Windows
    FLOCK = False

__all__ = [
    "ARCHIVED_TYPES",
    "ARCHIVE_PID",
    "CLEANUP_INTERVAL",
    "FLOCK",
    "JOURNAL_NAME",
    "LOCK_NAME",
    "TMP_SUFFIX",
    "MultiProcessCollector",
    "child_exit",
    "cleanup",
    "directory",
    "is_alive",
    "start_cleanup",
    "stop_cleanup",
]

logger = logging.getLogger("stallwatch")

LOCK_NAME = ".stallwatch.lock"


def directory() -> str | None:
    """The multiprocess directory of this process, or None when it is not in that mode."""
    env = os.environ
    return env.get("PROMETHEUS_MULTIPROC_DIR") or env.get("prometheus_multiproc_dir")


# -- locking -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: str, *, exclusive: bool) -> Iterator[bool]:
    """Hold the directory's lock; yields False (and holds nothing) where flock is missing."""
    if not FLOCK:  # pragma: no cover - Windows
        yield False
        return
    fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class MultiProcessCollector(_PrometheusCollector):
    """prometheus-client's collector, reading under stallwatch's shared lock.

    Without the lock a scrape that listed the files just before a cleanup would read a
    dead worker's values twice (its file and the archive) or fail on the deleted file.
    The lock is held only while the files are read, a millisecond or two. A swap left half
    done by a crash is read as finished (the journal names the files already archived).
    """

    def __init__(self, registry: CollectorRegistry | None, path: str | None = None) -> None:
        self._dir: str = path or directory() or ""
        super().__init__(registry, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        with _locked(self._dir, exclusive=False):
            names = set(os.listdir(self._dir)) - archived_already(self._dir)
            files = [os.path.join(self._dir, n) for n in sorted(names) if n.endswith(".db")]
            return list(self.merge(files, accumulate=True))  # type: ignore[no-untyped-call]


# -- the cleanup ---------------------------------------------------------------------------


def cleanup(path: str | None = None) -> list[int]:
    """Fold the files of every dead process in ``path`` into the archive; returns their pids.

    Safe to call from any number of processes at once and at any time: the work is done
    under an exclusive lock, and a process that still runs is never touched.
    """
    path = path or directory()
    if not path or not os.path.isdir(path) or not FLOCK:
        return []
    me = os.getpid()
    with _locked(path, exclusive=True):
        recover(path)
        dead = sorted(pid for pid in owners(path) if pid != me and not is_alive(pid))
        if not dead:
            return []
        for pid in dead:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        for typ in ARCHIVED_TYPES:
            fold(path, typ, dead)
    logger.info("stallwatch: merged the metrics of dead worker(s) %s into the archive", dead)
    return dead


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: ``from stallwatch.multiprocess import child_exit``
    in ``gunicorn.conf.py``. The workers' own timer would get there too; this is sooner."""
    try:
        cleanup()
    except Exception:
        logger.exception("stallwatch: cleanup after worker %s exited failed", worker.pid)


# -- the per-process timer -------------------------------------------------------------------

CLEANUP_INTERVAL = 10.0
"""Seconds between cleanups; a pass with nobody dead is one ``listdir`` and a few ``kill(0)``."""

_started_in: int | None = None
_start_lock = threading.Lock()
_stop = threading.Event()
_thread: threading.Thread | None = None


def start_cleanup(interval: float = CLEANUP_INTERVAL) -> bool:
    """Clean up now and every ``interval`` seconds from a daemon thread, once per process.

    A no-op (False) unless multiprocess mode is on. uvicorn gives no hook when a worker
    dies, so the live workers notice: the replacement at its startup, the others on the
    timer. The thread never touches the event loop.
    """
    global _started_in, _thread
    if not directory() or not FLOCK:
        return False
    if interval <= 0:
        raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
    with _start_lock:
        if _started_in == os.getpid():
            return False
        _started_in = os.getpid()  # a forked child has no thread, and starts its own
        _stop.clear()
        _thread = threading.Thread(
            target=_run, args=(interval,), name="stallwatch-multiprocess-cleanup", daemon=True
        )
        _thread.start()
    return True


def stop_cleanup(timeout: float = 5.0) -> None:
    """Stop this process's cleanup thread (tests, embedding); the server never needs to."""
    global _started_in, _thread
    with _start_lock:
        thread, _thread, _started_in = _thread, None, None
        _stop.set()
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


def _run(interval: float) -> None:
    failed = False
    while True:
        try:
            cleanup()
            failed = False
        except Exception:
            if not failed:  # log a persistent failure once, not every interval
                logger.exception("stallwatch: multiprocess cleanup failed (retrying)")
            failed = True
        if _stop.wait(interval):
            return
