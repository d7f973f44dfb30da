"""The demo app and its load generator, served by real uvicorn on 127.0.0.1.

The demo's promise: in blocking mode a 2 ms SQLite read, run many times back to back, stalls
the event loop, and stallwatch charges the stall to ``/cache/{key}`` at the line inside
``read_blocking``; flip the mode through the API and the reads leave the loop. These tests
drive it the way a user does, through HTTP, and read the answers from ``/metrics`` and
``/demo/stalls``.
"""

from __future__ import annotations

import http.client
import inspect
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from demo_app import cache as cache_module
from demo_app.app import settings_from_env
from demo_app.openloop import percentile
from demo_app.scrape import Histogram
from tests.servers import ROOT, free_port, running, uvicorn

CACHE = "/cache/{key}"
BURST = 40
"""Cache requests that reach the loop together."""
SEED_ROWS = 200_000
"""Reads of about 4 ms here (2 ms on a machine twice as fast): a burst holds the loop for
160 ms of back-to-back reads, three times the threshold below, though no single read comes
near it, and every blocking step is well above the 1 ms that an executor-mode step stays
under."""
THRESHOLD = 0.05
"""Above what 40 executor-mode steps (about 0.2 ms each) add up to on a loaded machine."""


def read_line() -> int:
    """The line of ``read_blocking`` that runs the query: the one stallwatch must name."""
    lines, first = inspect.getsourcelines(cache_module.read_blocking)
    return first + next(i for i, line in enumerate(lines) if ".execute(READ" in line)


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """One demo for the module, as ``uvicorn demo_app.app:app`` serves it, on the standard loop
    (whose poll stallwatch times exactly). Each test sets the mode it needs first."""
    with uvicorn(
        "demo_app.app:app",
        args=["--loop", "asyncio"],
        env={
            "DEMO_MODE": "blocking",
            "DEMO_EXECUTOR_THREADS": "1",
            "DEMO_SEED_ROWS": str(SEED_ROWS),
            "DEMO_STALL_THRESHOLD": str(THRESHOLD),
        },
        ready_path="/demo/mode",
    ) as base:
        yield base


# -- helpers ------------------------------------------------------------------------------------


Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(base: str) -> Scrape:
    text = httpx.get(base + "/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: Scrape, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def stall_events(base: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = httpx.get(base + "/demo/stalls", timeout=10).json()
    return events


def set_mode(base: str, mode: str) -> httpx.Response:
    return httpx.post(base + "/demo/mode", json={"mode": mode}, timeout=10)


def get_mode(base: str) -> str:
    mode: str = httpx.get(base + "/demo/mode", timeout=10).json()["mode"]
    return mode


def poll(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for ``condition`` with a deadline; the pause between tries is not a sync point."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def burst(base: str, size: int = BURST) -> None:
    """``size`` cache requests that leave within a millisecond or two, plus as many ``/ping``s
    as bystanders.

    Each request has a connection of its own, opened and used once beforehand so the server
    has accepted it; then every request is written before any answer is read. (A client that
    spends a millisecond of its own per request would space them out, and the server would
    finish each read before the next one arrived.)
    """
    url = httpx.URL(base)
    connections = [
        http.client.HTTPConnection(url.host, url.port, timeout=30) for _ in range(2 * size)
    ]
    try:
        for connection in connections:
            connection.request("GET", "/demo/mode")
            connection.getresponse().read()
        for i, connection in enumerate(connections):
            connection.request("GET", f"/cache/key-{i}" if i < size else "/ping")
        statuses = []
        for connection in connections:
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        for connection in connections:
            connection.close()
    assert statuses == [200] * len(connections)


def loop_went_round(base: str, beats: int = 5) -> None:
    """Wait until the loop has run a few more heartbeats: every stall that ended before now has
    reached the watchdog and its metrics by then."""
    name = "stallwatch_event_loop_lag_seconds_count"
    start = value(samples(base), name)
    poll(lambda: value(samples(base), name) >= start + beats, "heartbeats")


# -- the toggle ---------------------------------------------------------------------------------


def test_mode_toggle_round_trip(demo: str) -> None:
    assert set_mode(demo, "blocking").json() == {"mode": "blocking"}
    assert get_mode(demo) == "blocking"

    response = set_mode(demo, "executor")

    assert response.status_code == 200
    assert response.json() == {"mode": "executor"}
    assert get_mode(demo) == "executor"
    assert set_mode(demo, "blocking").json() == {"mode": "blocking"}
    assert get_mode(demo) == "blocking"


@pytest.mark.parametrize(
    "body", [{"mode": "turbo"}, {"mode": "BLOCKING"}, {"mode": None}, {}, ["executor"]]
)
def test_bad_mode_is_a_422_naming_the_allowed_values_and_changes_nothing(
    demo: str, body: object
) -> None:
    set_mode(demo, "executor")

    response = httpx.post(demo + "/demo/mode", json=body, timeout=10)
    not_json = httpx.post(
        demo + "/demo/mode",
        content=b"mode=blocking",
        headers={"content-type": "application/json"},
        timeout=10,
    )

    for answer in (response, not_json):
        assert answer.status_code == 422
        assert answer.json()["allowed"] == ["blocking", "executor"]
        assert "'blocking' or 'executor'" in answer.json()["detail"]
    assert get_mode(demo) == "executor"
    set_mode(demo, "blocking")


def test_mode_gauge_follows_the_toggle(demo: str) -> None:
    for mode, other in (("executor", "blocking"), ("blocking", "executor")):
        set_mode(demo, mode)
        scrape = samples(demo)
        assert value(scrape, "demo_cache_mode", mode=mode) == 1.0
        assert value(scrape, "demo_cache_mode", mode=other) == 0.0


# -- the cache route ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["blocking", "executor"])
def test_cache_returns_the_seeded_value_in_each_mode(demo: str, mode: str) -> None:
    set_mode(demo, mode)

    response = httpx.get(demo + "/cache/key-42", timeout=10)
    missing = httpx.get(demo + "/cache/no-such-key", timeout=10)

    assert response.json() == {"key": "key-42", "value": cache_module.seeded_value("key-42")}
    assert response.json()["value"] == "value-42"
    assert missing.status_code == 404
    set_mode(demo, "blocking")


def cache_stalls(before: Scrape, after: Scrape) -> dict[str, float]:
    """Stalls charged to the cache route between two scrapes, by cause."""
    name = "stallwatch_event_loop_stalls_total"
    return {
        cause: value(after, name, culprit=CACHE, cause=cause)
        - value(before, name, culprit=CACHE, cause=cause)
        for cause in ("blocking", "gc", "gil", "starvation")
    }


def short_holds(before: Scrape, after: Scrape) -> tuple[float, float]:
    """(cache requests whose longest step held the loop at most 1 ms, all cache requests)."""
    bucket, count = (
        "stallwatch_route_loop_hold_seconds_bucket",
        "stallwatch_route_loop_hold_seconds_count",
    )
    short = value(after, bucket, route=CACHE, le="0.001") - value(
        before, bucket, route=CACHE, le="0.001"
    )
    return short, value(after, count, route=CACHE) - value(before, count, route=CACHE)


def test_blocking_mode_stalls_are_charged_to_the_cache_route_at_read_blocking(
    demo: str,
) -> None:
    set_mode(demo, "blocking")
    before = samples(demo)
    seen = {(e["started_at"], e["duration"]) for e in stall_events(demo)}

    for _ in range(3):
        burst(demo)
    loop_went_round(demo)
    after = samples(demo)

    # Each burst holds the loop for about three thresholds. On a quiet machine the cause is
    # "blocking"; where the machine is so loaded that the loop thread got less than half a
    # CPU while it read, stallwatch says "starvation". Either way: this route, this line.
    by_cause = cache_stalls(before, after)
    assert sum(by_cause.values()) >= 1, by_cause
    events = [
        e
        for e in stall_events(demo)
        if (e["started_at"], e["duration"]) not in seen and e["culprit"] == CACHE
    ]
    assert events
    # A stall of many reads is sampled every few milliseconds and most samples land inside a
    # read, so the line most of these stalls name is the query in read_blocking.
    expected = f"{Path(cache_module.__file__).resolve()}:{read_line()} in read_blocking"
    tops = [e["top_frame"] for e in events]
    assert max(set(tops), key=tops.count) == expected, tops
    # /ping never blocks, yet it waited behind the reads, and stallwatch says who froze it.
    frozen = "stallwatch_request_frozen_seconds_total"
    assert value(after, frozen, route="/ping", culprit=CACHE) > value(
        before, frozen, route="/ping", culprit=CACHE
    )
    # The read ran on the loop: every cache request held it for the whole read.
    short, requests = short_holds(before, after)
    assert requests >= BURST
    assert short == 0


def test_executor_mode_keeps_the_cache_reads_off_the_loop(demo: str) -> None:
    set_mode(demo, "executor")
    before = samples(demo)

    for _ in range(3):
        burst(demo)
    loop_went_round(demo)
    after = samples(demo)

    # Not one stall charged to the cache route as blocking code. Stalls of cause
    # "starvation" may appear: the pool thread competes with the loop thread for the CPU
    # (and the GIL), and a loaded machine lends the loop thread too little of it. That is a
    # different diagnosis, and the reason the pool size is a flag.
    assert cache_stalls(before, after)["blocking"] == 0, cache_stalls(before, after)
    # The loop only hands each read to the pool and takes the answer back: well under a
    # millisecond per step (a few steps may be stretched by a busy machine).
    short, requests = short_holds(before, after)
    assert requests == 3 * BURST
    assert short >= 0.8 * requests
    set_mode(demo, "blocking")


# -- the command line ---------------------------------------------------------------------------


def test_python_m_demo_app_honours_its_flags() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "demo_app",
        "--port",
        str(port),
        "--mode",
        "executor",
        "--seed-rows",
        "500",
        "--executor-threads",
        "2",
    ]
    with running(command, base + "/demo/mode"):
        assert get_mode(base) == "executor"
        assert httpx.get(base + "/cache/key-499", timeout=10).json()["value"] == "value-499"
        assert httpx.get(base + "/cache/key-500", timeout=10).status_code == 404
        assert httpx.get(base + "/metrics", timeout=10, follow_redirects=False).status_code == 200


def test_environment_settings_are_validated() -> None:
    assert settings_from_env({}) == {}
    assert settings_from_env(
        {"DEMO_MODE": "executor", "DEMO_EXECUTOR_THREADS": "3", "DEMO_STALL_THRESHOLD": "0.01"}
    ) == {"mode": "executor", "executor_threads": 3, "stall_threshold": 0.01}
    with pytest.raises(ValueError, match=r"DEMO_MODE.*blocking, executor.*'fast'"):
        settings_from_env({"DEMO_MODE": "fast"})
    with pytest.raises(ValueError, match=r"DEMO_SEED_ROWS.*'many'"):
        settings_from_env({"DEMO_SEED_ROWS": "many"})


# -- the load generator -------------------------------------------------------------------------


def run_load(args: list[str], tmp_path: Path) -> tuple[str, list[dict[str, object]]]:
    out = tmp_path / "load.json"
    result = subprocess.run(
        [sys.executable, "-m", "demo_app.load", *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    steps: list[dict[str, object]] = json.loads(out.read_text())
    return result.stdout, steps


def test_load_generator_sweeps_both_modes_against_a_running_demo(demo: str, tmp_path: Path) -> None:
    stdout, steps = run_load(
        [
            "--url",
            demo,
            "--rates",
            "40,120",
            "--duration",
            "1",
            "--items-rate",
            "20",
            "--probe-rate",
            "20",
        ],
        tmp_path,
    )

    assert [(s["mode"], s["rate"]) for s in steps] == [
        ("blocking", 40),
        ("executor", 40),
        ("blocking", 120),
        ("executor", 120),
    ]
    for step in steps:
        routes = {r["route"]: r for r in step["routes"]}  # type: ignore[attr-defined]
        # Open loop: the schedule decides how many requests leave, not the server's speed.
        assert routes[CACHE]["sent"] == round(float(step["rate"]))  # type: ignore[arg-type]
        assert routes["/items/{item_id}"]["sent"] == 20
        assert routes["/ping"]["sent"] == 20
        for route in routes.values():
            assert route["ok"] == route["sent"]
            assert len(route["latencies"]) == route["sent"]
    for step in steps:
        # Explicit rates are offered as asked; the calibration still says what share of the
        # loop each is.
        assert step["arrivals"] == "poisson"
        assert 0 < float(step["utilization"]) < 5  # type: ignore[arg-type]
    assert "Calibration (blocking mode): a cache request holds the loop for" in stdout
    for text in (
        "p50",
        "load",
        "M/D/1",
        "p95",
        "p99",
        "max",
        "srv p99",
        "frozen/req",
        "/ping (probe)",
        "loop lag p99",
        "stalls:",
        "VERDICT",
    ):
        assert text in stdout
    assert get_mode(demo) == "executor"  # the generator switched it through the API
    set_mode(demo, "blocking")


def test_load_generator_offers_calibrated_shares_of_the_loop(demo: str, tmp_path: Path) -> None:
    stdout, steps = run_load(
        [
            "--url",
            demo,
            "--loads",
            "40,70",
            "--modes",
            "blocking",
            "--arrivals",
            "uniform",
            "--duration",
            "1",
            "--items-rate",
            "10",
            "--probe-rate",
            "20",
        ],
        tmp_path,
    )

    # The loads asked for, turned into cache rates by one calibration: a straight line
    # through the steady traffic's share, so the rates grow in proportion.
    assert [s["utilization"] for s in steps] == pytest.approx([0.40, 0.70])
    low, high = (float(s["rate"]) for s in steps)  # type: ignore[arg-type]
    service = float(steps[0]["service"])  # type: ignore[arg-type]
    assert high - low == pytest.approx(0.30 / service)
    for step in steps:
        routes = {r["route"]: r for r in step["routes"]}  # type: ignore[attr-defined]
        assert routes[CACHE]["sent"] == max(1, round(float(step["rate"])))  # type: ignore[arg-type]
        assert step["theory_p99"] is None  # M/D/1 is printed for Poisson arrivals only
    assert "Open loop, uniform arrivals" in stdout
    assert "Loads: 40% = " in stdout
    assert stdout.count("blocking     40%") == 1


def test_load_generator_starts_its_own_demo_for_each_pool_size(tmp_path: Path) -> None:
    stdout, steps = run_load(
        [
            "--rates",
            "30",
            "--duration",
            "1",
            "--items-rate",
            "10",
            "--probe-rate",
            "10",
            "--executor-threads",
            "1,2",
        ],
        tmp_path,
    )

    assert [(s["mode"], s["threads"]) for s in steps] == [
        ("blocking", 1),
        ("executor", 1),
        ("executor", 2),
    ]
    assert "executor:2" in stdout
    assert "stallwatch demo: the cache is in blocking mode" in stdout


# -- the arithmetic behind the table ------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    # 100 observations: 90 up to 1 ms, 9 between 1 and 2 ms, 1 between 2 and 5 ms.
    h = Histogram(((0.001, 90.0), (0.002, 99.0), (0.005, 100.0), (float("inf"), 100.0)), 0.12)
    assert h.quantile(0.5) == pytest.approx(0.001 * 50 / 90)
    assert h.quantile(0.99) == pytest.approx(0.002)
    assert h.quantile(0.995) == pytest.approx(0.002 + 0.003 * 0.5)
    assert h.max_bound() == 0.005
    assert h.mean() == pytest.approx(0.0012)
