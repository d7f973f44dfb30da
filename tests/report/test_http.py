"""The report over HTTP: its JSON, its page, and who may read them.

Served by real uvicorn from ``tests/apps/report_app.py`` (``StallwatchMiddleware(report=True)``
around a Starlette app whose ``/hold`` and ``/hold-again`` routes block the loop on known
lines), plus the rules on their own through ``ReportApp.respond``, which both the loop and the
off-loop server answer with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from stallwatch._types import PlainRequest
from stallwatch.options import check_path, check_token
from stallwatch.report.http import ReportApp, is_loopback
from tests.apps.report_app import AGAIN_LINE, HOLD_LINE
from tests.servers import free_port, uvicorn

APP = "tests.apps.report_app:app"
BASE = "/_stallwatch"
TOKEN = "s3cret-token-for-tests"


def stalls_seen(client: httpx.Client, base: str, count: int, timeout: float = 5.0) -> Any:
    """The summary once the watchdog has recorded ``count`` stalls (it reports just after)."""
    deadline = time.monotonic() + timeout
    while True:
        summary = client.get(f"{base}{BASE}/api/summary").json()
        if summary["stalls"] >= count or time.monotonic() > deadline:
            return summary
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, httpx.Client]]:
    """One report app that has seen three stalls: two at HOLD_LINE, then one at AGAIN_LINE."""
    with uvicorn(APP, ready_path="/ping") as base, httpx.Client(timeout=10.0) as client:
        for path in ("/hold?ms=120", "/hold?ms=80", "/hold-again?ms=70"):
            assert client.get(base + path).status_code == 200
            time.sleep(0.15)  # distinct start times, and the watchdog reports in order
        for _ in range(5):
            client.get(base + "/ping")
        stalls_seen(client, base, 3)
        yield base, client


# -- the JSON --------------------------------------------------------------------------------


def test_summary_groups_stalls_by_line_costliest_first(served: tuple[str, httpx.Client]) -> None:
    base, client = served
    answer = client.get(f"{base}{BASE}/api/summary")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    summary = answer.json()
    # A loaded machine may add a stall of its own (at start-up, say): find the app's two lines.
    assert summary["stalls"] >= 3
    groups = [g for g in summary["groups"] if g["function"] in ("hold", "hold_again")]
    first, second = groups
    # Two stalls at one line are one location with count 2, and it cost the most.
    assert first["location"].endswith(f"report_app.py:{HOLD_LINE} in hold")
    assert (first["line"], first["function"], first["count"]) == (HOLD_LINE, "hold", 2)
    assert second["location"].endswith(f"report_app.py:{AGAIN_LINE} in hold_again")
    assert second["count"] == 1
    assert first["total_seconds"] >= 0.19
    assert 0.115 <= first["max_seconds"] < first["total_seconds"]
    assert first["first_seen"] < first["last_seen"] < second["last_seen"]
    assert first["culprits"] == {"/hold": 2}
    assert second["culprit"] == "/hold-again"
    assert sum(first["causes"].values()) == 2
    assert first["allowed"] is False
    # Its most frequent stack ends at the line, and shows the route handler that called it.
    frames = first["stacks"][0]["frames"]
    assert frames[-1] == first["location"]
    assert frames[-2].endswith("in hold_route")
    assert sum(c["count"] for c in summary["causes"]) == summary["stalls"]


def test_stalls_come_newest_first_with_the_event_fields(served: tuple[str, httpx.Client]) -> None:
    base, client = served
    every = client.get(f"{base}{BASE}/api/stalls").json()["stalls"]
    stalls = [s for s in every if s["culprit"] in ("/hold", "/hold-again")]
    starts = [s["started_at"] for s in every]
    assert starts == sorted(starts, reverse=True)
    assert [s["culprit"] for s in stalls] == ["/hold-again", "/hold", "/hold"]
    assert stalls[0]["started_at"] > stalls[1]["started_at"] > stalls[2]["started_at"]
    newest = stalls[0]
    for key in ("duration", "cause", "culprits", "victims", "stacks", "top_frame", "sampled"):
        assert key in newest
    assert newest["location"] == newest["top_frame"]
    assert newest["location"].endswith(f":{AGAIN_LINE} in hold_again")
    assert newest["sampled"] is True
    assert newest["allowed"] is False
    assert 0.065 <= newest["duration"] < 0.5
    assert newest["ended_at"] == pytest.approx(newest["started_at"] + newest["duration"])


def test_loop_view_has_lag_percentiles_series_and_route_shares(
    served: tuple[str, httpx.Client],
) -> None:
    base, client = served
    loop = client.get(f"{base}{BASE}/api/loop", params={"window": 60}).json()
    assert loop["available"] is True
    assert loop["monitor"]["running"] is True
    assert loop["window"] == 60.0
    assert len(loop["series"]) == 60
    assert loop["beats"] > 50
    lag = loop["lag"]
    assert lag["p50"] <= lag["p90"] <= lag["p99"] <= lag["p99.9"] <= lag["max"]
    # The 120 ms hold was felt by the heartbeat: the worst lag covers most of it.
    assert lag["max"] >= 0.08
    shares = {r["route"]: r for r in loop["routes"]}
    assert shares["/hold"]["busy"] >= 0.19
    assert shares["/hold"]["share"] == pytest.approx(
        shares["/hold"]["busy"] / loop["covered"], rel=1e-6
    )
    assert set(loop["frozen_table"]) == {"culprits", "rows"}
    assert client.get(f"{base}{BASE}/api/loop", params={"window": "x"}).status_code == 400


def test_the_page_is_served_with_strict_headers(served: tuple[str, httpx.Client]) -> None:
    base, client = served
    page = client.get(f"{base}{BASE}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>stallwatch" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "connect-src 'self'" in csp
    assert "'unsafe-inline'" not in csp
    assert "script-src 'sha256-" in csp
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    # Without the slash, a relative redirect to it: the page fetches api/... relative to itself.
    bare = client.get(f"{base}{BASE}")
    assert bare.status_code == 307
    assert bare.headers["location"] == "_stallwatch/"
    assert client.get(f"{base}{BASE}", follow_redirects=True).url.path == f"{BASE}/"
    # HEAD answers like GET without a body.
    head = client.head(f"{base}{BASE}/api/summary")
    assert head.status_code == 200
    assert head.content == b""


def test_unknown_report_paths_and_methods(served: tuple[str, httpx.Client]) -> None:
    base, client = served
    assert client.get(f"{base}{BASE}/api/nothing").status_code == 404
    assert client.get(f"{base}{BASE}/api/stalls/").status_code == 404
    refused = client.post(f"{base}{BASE}/api/stalls")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"
    # A path that only starts like the report's is the application's.
    assert client.get(f"{base}/_stallwatchers").status_code == 404
    assert client.get(f"{base}/_stallwatchers").text == client.get(f"{base}/nope").text


# -- access ----------------------------------------------------------------------------------


def test_a_client_forwarded_from_another_address_is_refused() -> None:
    # uvicorn rewrites the client address from X-Forwarded-For when the connection comes
    # from a trusted proxy (here loopback): the report then sees the real client, not loopback.
    args = ["--proxy-headers", "--forwarded-allow-ips", "127.0.0.1"]
    with uvicorn(APP, args=args, ready_path="/ping") as base:
        remote = {"x-forwarded-for": "203.0.113.9"}
        answer = httpx.get(f"{base}{BASE}/api/stalls", headers=remote)
        assert answer.status_code == 403
        assert answer.text == "Forbidden\n"  # no detail
        assert httpx.get(f"{base}{BASE}/", headers=remote).status_code == 403
        # The application itself still answers that client.
        assert httpx.get(f"{base}/ping", headers=remote).status_code == 200
        local = {"x-forwarded-for": "127.0.0.1"}
        assert httpx.get(f"{base}{BASE}/api/stalls", headers=local).status_code == 200
        assert httpx.get(f"{base}{BASE}/api/stalls").status_code == 200


def test_with_a_token_only_the_token_is_answered() -> None:
    args = ["--proxy-headers", "--forwarded-allow-ips", "127.0.0.1"]
    env = {"SW_REPORT_TOKEN": TOKEN}
    with uvicorn(APP, args=args, env=env, ready_path="/ping") as base:
        url = f"{base}{BASE}/api/summary"
        right = {"authorization": f"Bearer {TOKEN}"}
        remote = {"x-forwarded-for": "198.51.100.4"}
        assert httpx.get(url, headers={**right, **remote}).status_code == 200
        assert httpx.get(url, headers=right).json()["stalls"] == 0
        assert httpx.get(url, headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
        for wrong in (
            {},  # missing, even from loopback: behind a local proxy everyone is loopback
            {"authorization": "Bearer nope"},
            {"authorization": f"Bearer {TOKEN}x"},
            {"authorization": f"Basic {TOKEN}"},
            {"authorization": TOKEN},
            remote,
        ):
            answer = httpx.get(url, headers=wrong)
            assert answer.status_code == 401, wrong
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert answer.text == "Unauthorized\n"
        assert httpx.get(f"{base}{BASE}/", headers=right).status_code == 200
        assert httpx.get(f"{base}{BASE}/").status_code == 401


def test_with_the_report_off_its_paths_are_the_applications() -> None:
    with uvicorn("tests.apps.report_app:off", ready_path="/ping") as base:
        not_found = httpx.get(f"{base}/nope")
        for path in ("/", "/api/stalls", "/api/summary", "/api/loop", ""):
            answer = httpx.get(f"{base}{BASE}{path}")
            assert answer.status_code == 404
            assert answer.text == not_found.text  # the app's own 404, not the report's
            assert "content-security-policy" not in answer.headers


def test_the_off_loop_port_serves_the_report_while_the_loop_is_held() -> None:
    port = free_port()
    with uvicorn(APP, env={"SW_METRICS_PORT": str(port)}, ready_path="/ping") as base:
        off_loop = f"http://127.0.0.1:{port}"
        scraper = httpx.Client(timeout=2.0)
        assert scraper.get(f"{off_loop}{BASE}/api/loop").status_code == 200
        holder = threading.Thread(target=lambda: httpx.get(f"{base}/hold?ms=1500", timeout=10))
        holder.start()
        held: list[float] = []
        latencies: list[float] = []
        deadline = time.monotonic() + 5.0
        while not held and time.monotonic() < deadline:
            began = time.perf_counter()
            loop = scraper.get(f"{off_loop}{BASE}/api/loop").json()
            latencies.append(time.perf_counter() - began)
            if loop["monitor"]["held_for"]:
                held.append(loop["monitor"]["held_for"])
            time.sleep(0.05)
        during = holder.is_alive()
        holder.join(10)
        assert held, "the off-loop report never saw the loop held"
        assert during, "the hold was over before the off-loop report answered"
        assert max(latencies) < 0.5, latencies
        assert held[0] >= 0.05  # past the app's threshold
        assert "stallwatch_event_loop_lag_seconds" in scraper.get(f"{off_loop}/metrics").text
        summary = stalls_seen(scraper, off_loop, 1)
        assert HOLD_LINE in [g["line"] for g in summary["groups"]]
        # The same rules and answers there as on the loop.
        assert scraper.get(f"{off_loop}{BASE}/api/nothing").status_code == 404
        scraper.close()


# -- the rules on their own ------------------------------------------------------------------


class FakeMonitor:
    running = True
    probe = "poll"
    interval = 0.01
    stall_threshold = 0.02
    history = None

    def __init__(self) -> None:
        self.errors: list[str] = []

    def recent_stalls(self) -> list[Any]:
        return []

    def internal_error(self, component: str) -> None:
        self.errors.append(component)


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "[::1]"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "203.0.113.9", "::ffff:10.0.0.1", "fe80::1", "localhost", "", None):
        assert not is_loopback(host), host


def test_options_are_checked_with_their_names() -> None:
    for bad in ("", "x", "/trailing/", "/", "/q?x", 7):
        with pytest.raises(ValueError, match="report_path"):
            check_path(bad)
    assert check_path("/ops/stalls") == "/ops/stalls"
    for token in ("", " padded ", "caf\u00e9", 42, "two\nlines"):
        with pytest.raises(ValueError, match="report_token"):
            check_token(token)
    assert check_token(None) is None
    with pytest.raises(ValueError, match="report_path"):
        ReportApp(lambda: None, path="/x/")


def test_respond_is_the_one_place_for_both_servers() -> None:
    monitor = FakeMonitor()
    report = ReportApp(lambda: monitor, path="/ops")  # type: ignore[arg-type, return-value]
    status, _headers, body = report.respond(
        PlainRequest("GET", "/ops/api/loop?window=30", {}, "127.0.0.1")
    )
    assert status == 200
    assert b'"available":false' in body
    assert report.respond(PlainRequest("GET", "/ops/api/loop", {}, "10.1.1.1"))[0] == 403
    assert report.respond(PlainRequest("GET", "/elsewhere", {}, "127.0.0.1"))[0] == 404

    def broken() -> Any:
        raise RuntimeError("a monitor half stopped")

    failing = ReportApp(broken)
    status, _, body = failing.respond(
        PlainRequest("GET", "/_stallwatch/api/stalls", {}, "127.0.0.1")
    )
    assert status == 500
    assert body == b"Internal Server Error\n"
