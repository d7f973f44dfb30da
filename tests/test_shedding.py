"""Load shedding: while the loop's recent lag is above ``shed_lag``, new requests get 503 and
``Retry-After`` before the app sees them; requests already admitted are never touched.

The decision and the answer first; then real uvicorn in open-loop overload.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from stallwatch.shedding import (
    BODY,
    STATUS,
    Shedder,
    recent_lag,
    response,
    retry_after,
    should_shed,
)


@pytest.mark.parametrize(
    ("last", "overdue", "lag"),
    [(0.0, -0.01, 0.0), (0.03, -0.005, 0.03), (0.01, 0.2, 0.2), (-0.001, -0.002, 0.0)],
)
def test_recent_lag_is_the_last_beats_or_the_overdue_ones(
    last: float, overdue: float, lag: float
) -> None:
    assert recent_lag(last, overdue) == lag


@pytest.mark.parametrize(
    ("lag", "shed_lag", "shed"),
    [(0.2, None, False), (0.05, 0.05, False), (0.051, 0.05, True), (0.0, 0.05, False)],
)
def test_should_shed(lag: float, shed_lag: float | None, shed: bool) -> None:
    assert should_shed(lag, shed_lag) is shed


@pytest.mark.parametrize(
    ("lag", "seconds"), [(0.0, 1), (0.06, 1), (1.0, 1), (1.2, 2), (300.0, 60), (float("nan"), 60)]
)
def test_retry_after(lag: float, seconds: int) -> None:
    assert retry_after(lag) == seconds


def test_the_refusal() -> None:
    start, body = response(2)
    assert start["status"] == STATUS == 503
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"2"
    assert headers[b"content-length"] == str(len(BODY)).encode()
    assert body == {"type": "http.response.body", "body": BODY}


def test_the_shedder_counts_each_refusal_by_route() -> None:
    registry = CollectorRegistry()
    counter = Counter("stallwatch_requests_shed", "shed", ["route"], registry=registry)
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    shedder = Shedder(0.05, lambda: 0.2, lambda scope: scope["route"], counter)
    for route in ("/a", "/a", "/b"):
        asyncio.run(shedder.refuse({"route": route}, send, 0.2))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] * 3
    value = registry.get_sample_value
    assert value("stallwatch_requests_shed_total", {"route": "/a"}) == 2
    assert value("stallwatch_requests_shed_total", {"route": "/b"}) == 1
