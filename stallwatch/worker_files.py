"""The multiprocess directory's files, read and rewritten for ``multiprocess.py``: whose each
file is, whether its pid still runs, and the journaled swap that folds a dead pid's counters,
histograms and summaries into one ``<type>_archive.db`` per type.

Nothing here takes the directory's lock: every function that writes is called by
``multiprocess.cleanup`` with the lock held exclusively, and ``archived_already`` by the
collector with it held shared. The files are the only state; this module keeps none.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from typing import Any

# Pinned private API: prometheus_client.mmap_dict (checked against prometheus-client 0.17 to
# 0.26). Reading and writing the ``.db`` files has no public function; stallwatch only copies
# keys verbatim (``read_all_values_from_file``) and writes sums back under the same keys
# (``MmapedDict.write_value``), and tests/test_multiprocess.py checks the round trip through
# prometheus-client's own collector, so a format change fails the tests, not production.
from prometheus_client.mmap_dict import MmapedDict

ARCHIVED_TYPES: tuple[str, ...] = ("counter", "histogram", "summary")
"""File types whose values add up across processes, so a dead pid's share can be summed."""

ARCHIVE_PID = "archive"
"""Stands where the pid is in an archive file's name: ``counter_archive.db``."""

JOURNAL_NAME = ".stallwatch-merge.json"
TMP_SUFFIX = ".merging"
"""Suffix of an archive being written; not ``.db``, so no scrape ever reads it half done."""

_LIVE_GAUGE_PREFIXES = ("gauge_liveall_", "gauge_livemin_", "gauge_livemax_",
                        "gauge_livesum_", "gauge_livemostrecent_")  # fmt: skip


def archived_already(path: str) -> set[str]:
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


def owners(path: str) -> set[int]:
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


def recover(path: str) -> None:
    """Finish or undo a swap that a crashed cleanup left half done (lock held)."""
    journal = os.path.join(path, JOURNAL_NAME)
    if os.path.exists(journal):
        for name in archived_already(path):  # the archive holds them: finish the swap
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, name))
        os.remove(journal)
    for name in os.listdir(path):
        if name.endswith(TMP_SUFFIX):  # never committed: its sources still count
            os.remove(os.path.join(path, name))


def fold(path: str, typ: str, pids: list[int]) -> list[int]:
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
