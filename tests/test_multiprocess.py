"""Many workers, one scrape: counts add up across workers, and a dead worker's counts are
neither lost nor counted twice once its files are folded into the archive.

The first tests write the files with real short-lived processes (prometheus-client in
multiprocess mode, then exit) and read them back through both stallwatch's collector and
prometheus-client's own; the last ones run real uvicorn and gunicorn workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector as PlainCollector
from prometheus_client.parser import text_string_to_metric_families

from stallwatch import multiprocess
from stallwatch.multiprocess import MultiProcessCollector, cleanup, is_alive

from .servers import ROOT, free_port, running, uvicorn

WORKER = textwrap.dedent(
    """
    import sys
    from prometheus_client import Counter, Gauge, Histogram

    hits = Counter("t_hits", "Hits.", ["route"])
    latency = Histogram("t_latency_seconds", "Latency.", ["route"], buckets=(0.1, 1.0))
    held = Gauge("t_held_seconds", "Held now.", multiprocess_mode="livemax")
    last = Gauge("t_last", "Last value.", multiprocess_mode="all")
    n = int(sys.argv[1])
    for i in range(n):
        hits.labels("/a").inc()
        latency.labels("/a").observe(0.05 if i % 2 else 0.5)
    hits.labels("/b").inc(2 * n)
    held.set(n)
    last.set(n)
    if len(sys.argv) > 2:  # stay alive until told to go
        print("ready", flush=True)
        sys.stdin.readline()
    """
)


def worker_env(mpdir: Path) -> dict[str, str]:
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir)}


def dead_worker(mpdir: Path, n: int) -> int:
    """Run a process that counts ``n`` hits on /a and 2n on /b and exits; returns its pid."""
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(n)], env=worker_env(mpdir))
    assert proc.wait(30) == 0
    return proc.pid


@pytest.fixture
def live_worker(mpdir: Path) -> Iterator[Callable[[int], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(n: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(n), "stay"], env=worker_env(mpdir),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes both pipes


@pytest.fixture
def mpdir(tmp_path: Path) -> Path:
    path = tmp_path / "multiproc"
    path.mkdir()
    return path


def scrape(mpdir: Path, collector: type = MultiProcessCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    collector(registry, path=str(mpdir))
    return registry


def totals(registry: CollectorRegistry) -> dict[str, float | None]:
    get = registry.get_sample_value
    return {
        "/a": get("t_hits_total", {"route": "/a"}),
        "/b": get("t_hits_total", {"route": "/b"}),
        "count": get("t_latency_seconds_count", {"route": "/a"}),
        "le=0.1": get("t_latency_seconds_bucket", {"route": "/a", "le": "0.1"}),
        "sum": get("t_latency_seconds_sum", {"route": "/a"}),
    }


def expected(*ns: int) -> dict[str, object]:
    n = sum(ns)
    return {
        "/a": float(n),
        "/b": float(2 * n),
        "count": float(n),
        "le=0.1": float(sum(k // 2 for k in ns)),
        "sum": pytest.approx(sum(0.05 * (k // 2) + 0.5 * (k - k // 2) for k in ns)),
    }


def files(mpdir: Path) -> set[str]:
    return {p.name for p in mpdir.iterdir() if p.name.endswith(".db")}


# -- folding dead workers into the archive --------------------------------------------------


def test_cleanup_folds_dead_workers_into_the_archive_and_keeps_every_total(mpdir: Path) -> None:
    pids = [dead_worker(mpdir, n) for n in (1, 2, 3)]
    assert totals(scrape(mpdir)) == expected(1, 2, 3)

    assert cleanup(str(mpdir)) == sorted(pids)

    assert totals(scrape(mpdir)) == expected(1, 2, 3)
    # prometheus-client's own collector reads the archive the same (the pinned file format).
    assert totals(scrape(mpdir, PlainCollector)) == expected(1, 2, 3)
    left = files(mpdir)
    assert {"counter_archive.db", "histogram_archive.db"} <= left
    assert not any(
        name.startswith(("counter_", "histogram_")) and name[-4].isdigit() for name in left
    )
    # Live gauges of the dead go (as mark_process_dead does); "all" gauges stay per pid.
    assert not any(name.startswith("gauge_livemax_") for name in left)
    assert {f"gauge_all_{pid}.db" for pid in pids} <= left


def test_later_deaths_add_to_the_archive_and_a_second_cleanup_changes_nothing(mpdir: Path) -> None:
    dead_worker(mpdir, 2)
    cleanup(str(mpdir))
    later = dead_worker(mpdir, 5)

    assert cleanup(str(mpdir)) == [later]
    assert cleanup(str(mpdir)) == []

    assert totals(scrape(mpdir)) == expected(2, 5)
    assert len([name for name in files(mpdir) if name.startswith("counter_")]) == 1


def test_a_live_worker_is_never_touched(
    mpdir: Path, live_worker: Callable[[int], subprocess.Popen[str]]
) -> None:
    alive = live_worker(4)
    dead = dead_worker(mpdir, 1)

    assert cleanup(str(mpdir)) == [dead]

    assert {f"counter_{alive.pid}.db", f"gauge_livemax_{alive.pid}.db"} <= files(mpdir)
    assert totals(scrape(mpdir)) == expected(4, 1)
    assert scrape(mpdir).get_sample_value("t_held_seconds") == 4.0  # livemax: only the live one

    assert alive.stdin is not None
    alive.stdin.write("go\n")
    alive.stdin.flush()
    assert alive.wait(10) == 0
    assert cleanup(str(mpdir)) == [alive.pid]
    assert totals(scrape(mpdir)) == expected(4, 1)
    assert scrape(mpdir).get_sample_value("t_held_seconds") is None


def test_a_zombie_counts_as_dead_and_a_running_process_as_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while is_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # exited but not reaped: a zombie until wait() below
    assert not is_alive(proc.pid)
    assert is_alive(os.getpid())
    proc.wait()


# -- crashes half way through a swap ---------------------------------------------------------


def test_a_crash_before_the_archive_is_replaced_loses_nothing(
    mpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_worker(mpdir, 3)
    dead_worker(mpdir, 4)

    def crash(src: str, dst: str) -> None:
        raise KeyboardInterrupt("the cleaning process dies here")

    monkeypatch.setattr("stallwatch.multiprocess.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        cleanup(str(mpdir))
    monkeypatch.undo()

    assert totals(scrape(mpdir)) == expected(3, 4)  # the sources still count, once
    assert len(cleanup(str(mpdir))) == 2
    assert totals(scrape(mpdir)) == expected(3, 4)
    assert not [p for p in mpdir.iterdir() if p.name.endswith(multiprocess.TMP_SUFFIX)]
    assert not (mpdir / multiprocess.JOURNAL_NAME).exists()


def test_a_crash_after_the_archive_is_replaced_counts_nothing_twice(
    mpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = [dead_worker(mpdir, 3), dead_worker(mpdir, 4)]
    real_remove = os.remove

    def crash_on_sources(path: str) -> None:
        if Path(path).name in {f"counter_{pid}.db" for pid in pids}:
            raise KeyboardInterrupt("the cleaning process dies here")
        real_remove(path)

    monkeypatch.setattr("stallwatch.multiprocess.os.remove", crash_on_sources)
    with pytest.raises(KeyboardInterrupt):
        cleanup(str(mpdir))
    monkeypatch.undo()

    # The archive holds the dead counters and their files are still there: a plain collector
    # counts them twice; stallwatch's reads the journal and does not.
    assert totals(scrape(mpdir, PlainCollector))["/a"] == 14.0
    assert totals(scrape(mpdir)) == expected(3, 4)
    cleanup(str(mpdir))
    assert totals(scrape(mpdir)) == expected(3, 4)
    assert totals(scrape(mpdir, PlainCollector)) == expected(3, 4)
    assert not (mpdir / multiprocess.JOURNAL_NAME).exists()


def test_a_scrape_waits_while_a_cleanup_holds_the_lock(mpdir: Path) -> None:
    dead_worker(mpdir, 1)
    done = threading.Event()
    results: list[dict[str, float | None]] = []

    def scrape_in_thread() -> None:
        results.append(totals(scrape(mpdir)))
        done.set()

    with multiprocess._locked(str(mpdir), exclusive=True):
        thread = threading.Thread(target=scrape_in_thread)
        thread.start()
        assert not done.wait(0.3), "the scrape read the files while a cleanup held the lock"
    assert done.wait(10)
    thread.join()
    assert results == [expected(1)]


# -- the hooks -----------------------------------------------------------------------------------


def test_gunicorn_child_exit_hook_folds_the_dead_worker(
    mpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mpdir))
    pid = dead_worker(mpdir, 2)

    multiprocess.child_exit(None, SimpleNamespace(pid=pid))

    assert f"counter_{pid}.db" not in files(mpdir)
    assert totals(scrape(mpdir)) == expected(2)


def test_the_cleanup_thread_runs_only_in_multiprocess_mode_and_once_per_process(
    mpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    assert multiprocess.start_cleanup() is False
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mpdir))
    with pytest.raises(ValueError, match="interval"):
        multiprocess.start_cleanup(interval=0)

    pid = dead_worker(mpdir, 3)
    try:
        assert multiprocess.start_cleanup(interval=0.05) is True
        assert multiprocess.start_cleanup(interval=0.05) is False
        later = dead_worker(mpdir, 1)  # found by the timer, not only at start
        deadline = time.monotonic() + 10
        while {f"counter_{pid}.db", f"counter_{later}.db"} & files(mpdir):
            assert time.monotonic() < deadline, files(mpdir)
            time.sleep(0.02)
    finally:
        multiprocess.stop_cleanup()
    assert totals(scrape(mpdir)) == expected(3, 1)


# -- real servers ----------------------------------------------------------------------------


def served_by(base: str, want: int = 2, limit: int = 400) -> tuple[set[int], int]:
    """GET /pid on a new connection each time until ``want`` workers answered; (pids, sent)."""
    pids: set[int] = set()
    sent = 0
    deadline = time.monotonic() + 60
    while len(pids) < want:
        assert sent < limit, f"only {pids} answered {sent} requests"
        assert time.monotonic() < deadline, f"only {pids} answered {sent} requests"
        pids.add(httpx.get(base + "/pid", timeout=10).json()["pid"])
        sent += 1
    return pids, sent


def send(base: str, n: int) -> set[int]:
    return {httpx.get(base + "/pid", timeout=10).json()["pid"] for _ in range(n)}


def counted(base: str, route: str = "/pid") -> float:
    """Requests of ``route`` in one scrape of ``/metrics``, whichever worker answers it."""
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "stallwatch_http_request_duration_seconds"
        for sample in family.samples
        if sample.name.endswith("_count") and sample.labels["route"] == route
    )


def stalls(base: str, culprit: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "stallwatch_event_loop_stalls"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["culprit"] == culprit
    )


def two_workers(mpdir: Path) -> AbstractContextManager[str]:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mpdir)}
    # Ready when /metrics answers: a request to it is not counted, one to /pid would be.
    return uvicorn("tests.apps.mp_app:app", args=["--workers", "2"], env=env, ready_path="/metrics")


def assert_every_scrape_counts(base: str, expected_count: int, scrapes: int = 8) -> None:
    # Each worker hands what it counted to prometheus-client at least every 0.1 s (and before a
    # scrape it serves itself): once the total is reached, every scrape must agree on it.
    deadline = time.monotonic() + 5
    while counted(base) != expected_count and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = [counted(base) for _ in range(scrapes)]
    assert seen == [float(expected_count)] * scrapes


def test_two_uvicorn_workers_one_scrape_counts_every_request(mpdir: Path) -> None:
    with two_workers(mpdir) as base:
        pids, sent = served_by(base)
        pids |= send(base, 30)
        sent += 30

        assert len(pids) == 2
        assert_every_scrape_counts(base, sent)
        # Both workers' files are there: the total really is a sum over processes.
        assert {f"histogram_{pid}.db" for pid in pids} <= files(mpdir)

        blocks = 4
        for _ in range(blocks):
            httpx.get(base + "/block", params={"seconds": "0.06"}, timeout=10)
        deadline = time.monotonic() + 15
        while stalls(base, "/block") < blocks and time.monotonic() < deadline:
            time.sleep(0.05)  # a stall is recorded by the watchdog just after it ends
        assert stalls(base, "/block") == blocks

        text = httpx.get(base + "/metrics", timeout=10).text
        held = [line for line in text.splitlines()
                if line.startswith("stallwatch_event_loop_stall_in_progress_seconds ")]  # fmt: skip
        assert len(held) == 1  # livemax: one value for the service, no per-pid series


def test_a_killed_uvicorn_worker_is_neither_lost_nor_double_counted(mpdir: Path) -> None:
    with two_workers(mpdir) as base:
        pids, sent = served_by(base)
        pids |= send(base, 20)
        sent += 20
        assert_every_scrape_counts(base, sent)
        victim = min(pids)
        assert f"counter_{victim}.db" in files(mpdir)

        os.kill(victim, signal.SIGKILL)
        # uvicorn's supervisor starts a replacement; keep asking until a new pid answers.
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "uvicorn did not replace the killed worker"
            try:
                pid = httpx.get(base + "/pid", timeout=10).json()["pid"]
            except httpx.TransportError:
                continue  # the connection landed on the dying worker
            sent += 1
            if pid not in pids:
                break
        # The replacement folds the dead worker's files into the archive at its startup.
        while {name for name in files(mpdir) if name.endswith(f"_{victim}.db")}:
            assert time.monotonic() < deadline, files(mpdir)
            time.sleep(0.05)

        assert "counter_archive.db" in files(mpdir)
        assert_every_scrape_counts(base, sent)
        send(base, 10)
        assert_every_scrape_counts(base, sent + 10)


def test_gunicorn_uvicorn_workers_with_child_exit_count_every_request(mpdir: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "gunicorn", "tests.apps.mp_app:app",
        "--worker-class", "uvicorn.workers.UvicornWorker", "--workers", "2",
        "--bind", f"127.0.0.1:{port}", "--config", "python:tests.apps.gunicorn_conf",
        "--log-level", "warning",
    ]  # fmt: skip
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mpdir), "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    with running(command, base + "/metrics", env=env):
        pids, sent = served_by(base)
        assert_every_scrape_counts(base, sent)
        victim = min(pids)

        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while {name for name in files(mpdir) if name.endswith(f"_{victim}.db")}:
            assert time.monotonic() < deadline, files(mpdir)
            time.sleep(0.05)

        assert_every_scrape_counts(base, sent)
        assert len(send(base, 20) - {victim}) >= 1
        assert_every_scrape_counts(base, sent + 20)


def test_the_gunicorn_config_used_above_is_the_documented_one() -> None:
    conf = (ROOT / "tests" / "apps" / "gunicorn_conf.py").read_text()
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert "from stallwatch.multiprocess import child_exit" in conf
    assert "from stallwatch.multiprocess import child_exit" in docs
