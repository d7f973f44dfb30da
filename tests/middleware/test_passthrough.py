"""Never in the way: whatever the app does reaches the client exactly as without stallwatch.

Streams, server-sent events, websockets, lifespan, a client that hangs up mid-stream,
background tasks and exceptions all pass through the middleware under real uvicorn, are
recorded where they should be, and never count as an error of stallwatch's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.middleware_support import BARE, FRAMEWORKS, AppSpec, Metrics, Server, poll, serve


@pytest.fixture(scope="module", params=FRAMEWORKS, ids=str)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server per app for this module: each test uses routes no other test here uses."""
    spec: AppSpec = request.param
    with serve(spec, tmp_path_factory.mktemp(spec.name)) as running:
        yield running


def recorded(
    metrics: Metrics, route: str, method: str = "GET", status: str = "200"
) -> float | None:
    return metrics.value(
        "stallwatch_http_request_duration_seconds_count", method=method, route=route, status=status
    )


def once_recorded(server: Server, route: str, method: str = "GET", status: str = "200") -> Metrics:
    """A scrape taken once ``route`` is recorded: a session is recorded when it ends, which
    the server may finish after the client has seen the last byte."""

    def check() -> Metrics | None:
        metrics = server.metrics()
        return metrics if recorded(metrics, route, method, status) else None

    return poll(check, f"{method} {route} {status} to be recorded")


def test_a_streaming_response_arrives_whole_and_in_order(server: Server) -> None:
    with server.client.stream("GET", "/stream", params={"chunks": 20}) as response:
        assert response.status_code == 200
        pieces = list(response.iter_text())
    assert "".join(pieces) == "".join(f"chunk {i}\n" for i in range(20))
    metrics = once_recorded(server, "/stream")
    assert recorded(metrics, "/stream") == 1
    assert metrics.internal_errors() == 0


def test_server_sent_events_arrive_as_events(server: Server) -> None:
    with server.client.stream("GET", "/sse", params={"events": 5}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert data == [f"event {i}" for i in range(5)]
    metrics = server.metrics()
    assert recorded(metrics, "/sse") == 1
    assert metrics.internal_errors() == 0


def test_a_websocket_echoes_and_is_recorded_as_websocket(server: Server) -> None:
    with connect(server.base.replace("http://", "ws://") + "/ws") as websocket:
        for word in ("one", "two", "three"):
            websocket.send(word)
            assert websocket.recv(timeout=5) == word
    metrics = once_recorded(server, "/ws", "WEBSOCKET", "101")
    assert recorded(metrics, "/ws", "WEBSOCKET", "101") == 1
    methods = {
        labels["method"]
        for labels in metrics.labelsets("stallwatch_http_request_duration_seconds_count")
        if labels["route"] == "/ws"
    }
    assert methods == {"WEBSOCKET"}
    assert metrics.internal_errors() == 0


def test_a_client_that_hangs_up_mid_stream_does_not_disturb_the_server(server: Server) -> None:
    received = 0
    with (
        httpx.Client(base_url=server.base, timeout=10.0) as client,
        client.stream("GET", "/endless") as response,
    ):
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received >= 256 * 1024:
                break  # leaving the block closes the connection mid-stream
    assert received >= 256 * 1024
    poll(lambda: server.state()["streams_cancelled"] == 1, "the app to see the disconnect")
    assert server.get("/ping").json() == {"pong": True}
    metrics = once_recorded(server, "/endless")
    assert recorded(metrics, "/endless") == 1
    assert metrics.internal_errors() == 0


def test_background_tasks_run_after_the_response(server: Server) -> None:
    response = server.client.post("/background")
    assert response.json() == {"queued": True}
    poll(lambda: server.state()["background_done"] == 1, "the background task to run")
    metrics = server.metrics()
    assert recorded(metrics, "/background", method="POST") == 1
    assert metrics.internal_errors() == 0


def test_an_exception_is_recorded_as_500_and_reaches_the_framework(server: Server) -> None:
    # A fresh connection: uvicorn closes the one an application error happened on.
    response = httpx.get(server.base + "/boom", timeout=10.0)
    assert response.status_code == 500
    # Written by the app's exception handler in ServerErrorMiddleware, which sits outside
    # stallwatch: the exception went through the middleware unchanged.
    assert response.text == "handled RuntimeError: boom from the app"
    assert server.get("/ping").json() == {"pong": True}
    metrics = server.metrics()
    assert recorded(metrics, "/boom", status="500") == 1
    assert metrics.internal_errors() == 0


def test_a_bare_app_exception_reaches_the_server(tmp_path: Path) -> None:
    """Without a framework the server itself catches it: stallwatch recorded 500 and re-raised."""
    with serve(BARE, tmp_path) as bare:
        response = httpx.get(bare.base + "/boom", timeout=10.0)
        assert response.status_code == 500
        assert response.text == "Internal Server Error"  # uvicorn's own answer
        metrics = bare.metrics()
    assert recorded(metrics, "/boom", status="500") == 1
    assert metrics.internal_errors() == 0


@pytest.mark.parametrize("spec", FRAMEWORKS, ids=str)
def test_lifespan_startup_and_shutdown_of_the_app_still_run(spec: AppSpec, tmp_path: Path) -> None:
    with serve(spec, tmp_path) as running:
        state = running.state()
        metrics = running.metrics()
        assert not (tmp_path / "shutdown").exists()
    assert state["started"] is True  # set by the app's lifespan startup
    assert state["probe"] == "poll"  # and stallwatch's monitor started with it
    assert (tmp_path / "shutdown").read_text() == "ran"  # the app's lifespan shutdown ran
    # Lifespan is not a request: only the two requests made are recorded.
    routes = {
        labels["route"]
        for labels in metrics.labelsets("stallwatch_http_request_duration_seconds_count")
    }
    assert routes == {"/", "/state"}  # "/" is the readiness probe of tests.servers
    assert metrics.internal_errors() == 0
