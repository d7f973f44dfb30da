"""Named regressions of issue 15, on real uvicorn with asyncio and uvloop: what an everyday
app does with stallwatch is what it does without it (``tests/apps/regressions_app.py``)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.servers import uvicorn

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module", params=LOOPS)
def base(request: pytest.FixtureRequest) -> Iterator[str]:
    with uvicorn("tests.apps.regressions_app:app", args=["--loop", request.param]) as url:
        yield url


def internal_errors(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("stallwatch_internal_errors_total{")
    )


def test_a_post_with_a_body_through_a_decorator_middleware_is_answered(base: str) -> None:
    for size in (14, 0, 70_000):
        response = httpx.post(base + "/echo", content=b"x" * size, timeout=5)
        assert response.status_code == 200
        assert response.json() == {"got": size}
        assert response.headers["x-seen"] == "yes"
    assert internal_errors(base) == 0


def test_a_stream_whose_client_leaves_before_the_body_ends_clean(base: str) -> None:
    host, port = urlsplit(base).hostname, urlsplit(base).port
    assert host is not None
    assert port is not None
    before = [int(n) for n in httpx.get(base + "/streams", timeout=5).text.split()]
    for _ in range(5):
        with socket.create_connection((host, port), timeout=5) as client:
            client.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.05)  # the response has started, its body has not
        # closed: the server sees the disconnect, the app's task group is cancelled
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        started, finished = (int(n) for n in httpx.get(base + "/streams", timeout=5).text.split())
        if finished - before[1] == 5:
            break
        time.sleep(0.05)
    assert (started - before[0], finished - before[1]) == (5, 5)  # every body was cancelled
    assert httpx.get(base + "/", timeout=5).json() == {"ok": "yes"}  # and the server serves on
    assert internal_errors(base) == 0
