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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

# Pinned private API: prometheus_client.mmap_dict (checked against prometheus-client 0.17 to
# 0.26). Reading and writing the ``.db`` files has no public function; stallwatch only copies
# keys verbatim (``read_all_values_from_file``) and writes sums back under the same keys
# (``MmapedDict.write_value``), and tests/test_multiprocess.py checks the round trip through
# prometheus-client's own collector, so a format change fails the tests, not production.
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector as _PrometheusCollector
from prometheus_client.multiprocess import mark_process_dead

try:
    import fcntl

    FLOCK = True
except ImportError:  # pragma: no cover - Windows
    FLOCK = False

logger = logging.getLogger("stallwatch")

ARCHIVED_TYPES: tuple[str, ...] = ("counter", "histogram", "summary")
"""File types whose values add up across processes, so a dead pid's share can be summed."""

ARCHIVE_PID = "archive"
"""Stands where the pid is in an archive file's name: ``counter_archive.db``."""

LOCK_NAME = ".stallwatch.lock"
JOURNAL_NAME = ".stallwatch-merge.json"
TMP_SUFFIX = ".merging"
"""Suffix of an archive being written; not ``.db``, so no scrape ever reads it half done."""

_LIVE_GAUGE_PREFIXES = ("gauge_liveall_", "gauge_livemin_", "gauge_livemax_",
                        "gauge_livesum_", "gauge_livemostrecent_")  # fmt: skip


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
            names = set(os.listdir(self._dir)) - _archived_already(self._dir)
            files = [os.path.join(self._dir, n) for n in sorted(names) if n.endswith(".db")]
            return list(self.merge(files, accumulate=True))  # type: ignore[no-untyped-call]


def _archived_already(path: str) -> set[str]:
    """Files a crashed swap left behind although the archive already holds them."""
    try:
        with open(os.path.join(path, JOURNAL_NAME)) as f:
            entry = json.load(f)  # complete or absent: it is written aside and renamed
    except FileNotFoundError:
        return set()
    if os.path.exists(os.path.join(path, entry["tmp"])):
        return set()  # the archive was not replaced: the sources still count
    return set(entry["sources"])


# -- finding the dead ------------------------------------------------------------------------


def _owner(name: str) -> str | None:
    """The pid part of a multiprocess file name (``counter_12.db``, ``gauge_livemax_12.db``)."""
    if not name.endswith(".db"):
        return None
    parts = name[:-3].split("_")
    if parts[0] == "gauge":
        return parts[2] if len(parts) == 3 and name.startswith(_LIVE_GAUGE_PREFIXES) else None
    if parts[0] in ARCHIVED_TYPES and len(parts) == 2:
        return parts[1]
    return None


def _pids(path: str) -> set[int]:
    """Pids that own archivable or live-gauge files in ``path``."""
    found: set[int] = set()
    for name in os.listdir(path):
        owner = _owner(name)
        if owner is not None and owner.isdigit():
            found.add(int(owner))
    return found


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs here; a zombie (dead, not yet reaped) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and not ours to judge
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


# -- merging -----------------------------------------------------------------------------------


def _sum_files(files: Iterable[str]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for filename in files:
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(filename):  # type: ignore[no-untyped-call]
            totals[key] = totals.get(key, 0.0) + value
    return totals


def _write(filename: str, values: dict[str, float]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(filename)
    mmap_file = MmapedDict(filename)  # type: ignore[no-untyped-call]
    try:
        for key, value in values.items():
            mmap_file.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        mmap_file.close()  # type: ignore[no-untyped-call]


def _write_journal(path: str, entry: dict[str, Any]) -> None:
    journal = os.path.join(path, JOURNAL_NAME)
    with open(journal + ".tmp", "w") as f:
        json.dump(entry, f)
    os.replace(journal + ".tmp", journal)


def _recover(path: str) -> None:
    """Finish or undo a swap that a crashed cleanup left half done (lock held)."""
    journal = os.path.join(path, JOURNAL_NAME)
    if os.path.exists(journal):
        for name in _archived_already(path):  # the archive holds them: finish the swap
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, name))
        os.remove(journal)
    for name in os.listdir(path):
        if name.endswith(TMP_SUFFIX):  # never committed: its sources still count
            os.remove(os.path.join(path, name))


def _archive(path: str, typ: str, pids: list[int]) -> list[int]:
    """Add the ``typ`` files of ``pids`` into the archive and delete them (lock held)."""
    names = (f"{typ}_{pid}.db" for pid in pids)
    sources = [name for name in names if os.path.exists(os.path.join(path, name))]
    if not sources:
        return []
    archive = f"{typ}_{ARCHIVE_PID}.db"
    tmp = archive + TMP_SUFFIX
    inputs = [os.path.join(path, name) for name in (archive, *sources)]
    totals = _sum_files(p for p in inputs if os.path.exists(p))
    _write(os.path.join(path, tmp), totals)
    if any(is_alive(int(name[len(typ) + 1 : -3])) for name in sources):
        # A pid came back (reused by a new worker that reopened the file): leave it alone.
        os.remove(os.path.join(path, tmp))
        return []
    _write_journal(path, {"tmp": tmp, "sources": sources})
    os.replace(os.path.join(path, tmp), os.path.join(path, archive))  # the commit point
    for name in sources:
        os.remove(os.path.join(path, name))
    os.remove(os.path.join(path, JOURNAL_NAME))
    return [int(name[len(typ) + 1 : -3]) for name in sources]


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
        _recover(path)
        dead = sorted(pid for pid in _pids(path) if pid != me and not is_alive(pid))
        if not dead:
            return []
        for pid in dead:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        for typ in ARCHIVED_TYPES:
            _archive(path, typ, dead)
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
