"""Off-loop exposition: a scrape must be answered while the loop is stalled.

A ``/metrics`` route served by the event loop waits out every stall, so the stall gauge
can only ever be read as 0. With ``metrics_port`` the metrics are served from a thread of
their own; during a 2 s stall a scrape there answers within 100 ms and shows the stall in
progress.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.middleware_support import FRAMEWORKS, AppSpec, Metrics, poll, serve
from tests.servers import free_port

GAUGE = "stallwatch_event_loop_stall_in_progress_seconds"


@pytest.mark.parametrize("spec", FRAMEWORKS, ids=str)
def test_a_scrape_during_a_stall_is_answered_off_the_loop(spec: AppSpec, tmp_path: Path) -> None:
    port = free_port()
    with serve(spec, tmp_path, stall_threshold=0.1, metrics_port=port) as server:
        off_loop = f"http://127.0.0.1:{port}/metrics"
        # One client made beforehand: building an httpx client costs tens of milliseconds
        # on a loaded machine, which is not the server's time to answer.
        scraper = httpx.Client(timeout=1.0)
        assert Metrics(scraper.get(off_loop).text).value(GAUGE) == 0.0

        answers: list[httpx.Response] = []
        blocker = threading.Thread(
            target=lambda: answers.append(server.get("/block/sleep", seconds=2.0)), daemon=True
        )
        blocker.start()
        latencies: list[float] = []

        def scrape_sees_the_stall() -> float | None:
            began = time.perf_counter()
            response = scraper.get(off_loop)
            latencies.append(time.perf_counter() - began)
            seen = Metrics(response.text).value(GAUGE)
            return seen if seen else None

        in_progress = poll(scrape_sees_the_stall, "the stall gauge on the off-loop port", 5.0)
        during = blocker.is_alive()
        blocker.join(10.0)
        # The watchdog clears the gauge at its next wake-up once the loop is back: a
        # scrape that waited behind the stall may still read it.
        after = poll(
            lambda: m if (m := server.metrics()).value(GAUGE) == 0.0 else None,
            "the gauge back to 0",
            2.0,
        )
        off_after = Metrics(scraper.get(off_loop).text)
        scraper.close()

    assert during, "the stall was over before the off-loop scrape saw it"
    assert in_progress > 0.0
    # Every scrape of the off-loop port, those during the stall included, answered promptly.
    assert max(latencies) < 0.1, latencies
    assert answers[0].json()["blocked"] >= 2.0
    # The stall is counted once, the same on the off-loop port and on the app's /metrics.
    for metrics in (after, off_after):
        stalls = metrics.by("stallwatch_event_loop_stalls_total", "culprit", cause="blocking")
        assert stalls == {"/block/{kind}": 1}
        assert metrics.internal_errors() == 0
