"""``/livez``: alive while the loop polls within ``liveness_timeout``, however late it runs;
not alive when it has not polled for that long, or is not running. Detail (the culprit route
and line) only for the clients the report would answer.

The decision and the answer first, from readings alone; then a real server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.responses import PlainTextResponse

from stallwatch import MiddlewareOptions, StallwatchMiddleware
from stallwatch._types import PlainRequest
from stallwatch.liveness import PATH, Liveness, LoopReading, body, verdict
from tests.servers import free_port, uvicorn

HELD = LoopReading(
    running=True, held_for=3.0, lag=3.0, culprit="/block/{ms}", line="app.py:14 in block"
)


@pytest.mark.parametrize(
    ("situation", "reading", "alive", "status"),
    [
        ("polling", LoopReading(True, 0.0, 0.001), True, "alive"),
        ("a loop that turns but lags", LoopReading(True, 0.05, 0.05), True, "alive"),
        ("held, under the timeout", LoopReading(True, 0.999, 0.999), True, "alive"),
        ("held for the timeout", LoopReading(True, 1.0, 1.0), False, "held"),
        ("held past it", HELD, False, "held"),
        ("stopped, closed or not started", LoopReading(False, 0.0, 0.0), False, "stopped"),
    ],
)
def test_verdict(situation: str, reading: LoopReading, alive: bool, status: str) -> None:
    assert verdict(reading, timeout=1.0) == (alive, status), situation


def test_the_body_says_how_long_and_names_the_culprit_only_with_detail() -> None:
    assert body(HELD, 1.0, detail=False) == {
        "status": "held",
        "timeout": 1.0,
        "held_for": 3.0,
        "lag": 3.0,
    }
    assert body(HELD, 1.0, detail=True) == {
        "status": "held",
        "timeout": 1.0,
        "held_for": 3.0,
        "lag": 3.0,
        "culprit": "/block/{ms}",
        "line": "app.py:14 in block",
    }
    assert body(LoopReading(False, 0.0, 0.0), 1.0, detail=True) == {
        "status": "stopped",
        "timeout": 1.0,
    }


def loopback_only(headers: Mapping[str, str], client: str | None) -> bool:
    return client == "127.0.0.1"


def test_respond() -> None:
    readings = [LoopReading(True, 0.0, 0.002), HELD]
    livez = Liveness(lambda detail: readings.pop(0), 1.0, loopback_only)
    assert livez.handles(PATH)
    assert not livez.handles("/livez/")
    status, headers, data = livez.respond(PlainRequest("GET", PATH, {}, "10.0.0.7"))
    assert status == 200
    assert ("Cache-Control", "no-store") in headers
    assert json.loads(data) == {"status": "alive", "timeout": 1.0, "held_for": 0.0, "lag": 0.002}
    status, headers, data = livez.respond(PlainRequest("GET", PATH, {}, "127.0.0.1"))
    assert status == 503
    assert json.loads(data)["line"] == "app.py:14 in block"
    assert dict(headers)["Content-Length"] == str(len(data))


def test_head_and_other_methods() -> None:
    livez = Liveness(lambda detail: HELD, 1.0, loopback_only)
    status, headers, data = livez.respond(PlainRequest("HEAD", PATH, {}, None))
    assert (status, data) == (503, b"")
    assert int(dict(headers)["Content-Length"]) > 0
    status, headers, _ = livez.respond(PlainRequest("POST", PATH, {}, None))
    assert status == 405
    assert ("Allow", "GET, HEAD") in headers


def test_a_reading_that_fails_is_not_alive() -> None:
    def broken(detail: bool) -> LoopReading:
        raise RuntimeError("the monitor is not started")

    def refuses(headers: Mapping[str, str], client: str | None) -> bool:
        raise ValueError("bad header")

    status, _, data = Liveness(broken, 1.0, refuses).respond(PlainRequest("GET", PATH, {}, None))
    assert status == 503
    assert json.loads(data) == {"status": "stopped", "timeout": 1.0}


@pytest.mark.parametrize("value", [-1, 0, "10", float("nan"), None, True, 3601])
def test_a_bad_liveness_timeout_is_a_value_error_naming_it(value: object) -> None:
    with pytest.raises(ValueError, match="liveness_timeout"):
        MiddlewareOptions(liveness_timeout=value)  # type: ignore[arg-type]
    assert MiddlewareOptions().liveness_timeout == 10.0


def test_detail_follows_the_reports_access_rules() -> None:
    """Loopback clients, or with ``report_token`` its holders only; the report on or off."""
    app = PlainTextResponse("x")
    open_ = StallwatchMiddleware(app, registry=CollectorRegistry())._liveness()
    assert (
        open_.respond(PlainRequest("GET", PATH, {}, "127.0.0.1"))[0] == 503
    )  # no loop watched yet
    seen: list[bool] = []

    def read(detail: bool) -> LoopReading:
        seen.append(detail)
        return LoopReading(True, 30.0, 30.0, "/block/{ms}", "app.py:14 in block")

    for middleware, headers, client in [
        (StallwatchMiddleware(app, registry=CollectorRegistry()), {}, "127.0.0.1"),
        (StallwatchMiddleware(app, registry=CollectorRegistry()), {}, "10.1.2.3"),
        (StallwatchMiddleware(app, registry=CollectorRegistry(), report_token="s3"), {}, "::1"),
        (
            StallwatchMiddleware(app, registry=CollectorRegistry(), report_token="s3"),
            {"authorization": "Bearer s3"},
            "10.1.2.3",
        ),
    ]:
        livez = middleware._liveness()
        livez._read = read
        status, _, data = livez.respond(PlainRequest("GET", PATH, headers, client))
        assert status == 503
        assert ("line" in json.loads(data)) is seen[-1]
    assert seen == [True, False, False, True]


# -- real uvicorn ---------------------------------------------------------------------------

APP = "tests.apps.pools_app:app"


def livez(port: int) -> tuple[float, int, dict[str, Any]]:
    response = httpx.get(f"http://127.0.0.1:{port}{PATH}", timeout=2.0)
    return time.monotonic(), response.status_code, response.json()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_held_loop_fails_the_probe_and_recovers(loop: str) -> None:
    """A 3 s block with ``liveness_timeout=1``: 503 within 1.5 s of the block's start, with
    the culprit for a loopback client; 200 again within 0.5 s of its end."""
    port = free_port()
    env = {"SW_METRICS_PORT": str(port), "SW_LIVENESS_TIMEOUT": "1.0"}
    with uvicorn(APP, args=("--loop", loop), env=env, ready_path="/state") as base:
        assert livez(port)[1] == 200
        answer: dict[str, Any] = {}
        blocker = threading.Thread(
            target=lambda: answer.update(httpx.get(f"{base}/block?seconds=3", timeout=10).json())
        )
        blocker.start()
        seen: list[tuple[float, int, dict[str, Any]]] = []
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            seen.append(livez(port))
            if answer and time.monotonic() > answer["ended"] + 0.6:
                break
            time.sleep(0.02)
        blocker.join()
    began, ended = answer["began"], answer["ended"]
    first_down = next((at, body) for at, status, body in seen if status == 503)
    assert began + 1.0 <= first_down[0] <= began + 1.5
    assert first_down[1]["status"] == "held"
    assert first_down[1]["held_for"] >= 1.0
    assert first_down[1]["culprit"] == "/block"
    assert "pools_app.py" in first_down[1]["line"]
    back_up = next(at for at, status, _ in seen if status == 200 and at > ended)
    assert back_up <= ended + 0.5
    assert all(status == 503 for at, status, _ in seen if began + 1.1 < at < ended)


def test_a_loop_that_turns_but_lags_is_alive() -> None:
    """~90 % busy (45 ms held of every 50): late, never wedged; 200 throughout, with its lag."""
    port = free_port()
    env = {"SW_METRICS_PORT": str(port), "SW_LIVENESS_TIMEOUT": "1.0"}
    with uvicorn(APP, env=env, ready_path="/state") as base:
        httpx.get(f"{base}/busy", timeout=5)
        seen = []
        for _ in range(60):
            seen.append(livez(port))
            time.sleep(0.05)
    assert [status for _, status, _ in seen] == [200] * len(seen)
    lags = [body["lag"] for _, _, body in seen]
    assert 0.02 <= max(lags) < 0.5, lags
