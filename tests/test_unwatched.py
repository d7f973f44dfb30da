"""A loop stallwatch cannot watch (trio, as under ``hypercorn -k trio``): requests pass through
unwatched, and one warning says so, once, instead of an error on every request."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry

import stallwatch.middleware
from stallwatch import StallwatchMiddleware


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


def test_requests_on_trio_pass_through_with_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stallwatch.middleware, "_warned_unwatched", False)  # a fresh process
    registry = CollectorRegistry()
    middleware = StallwatchMiddleware(app, registry=registry, metrics_path="/metrics")

    async def serve(paths: list[str]) -> list[list[dict[str, Any]]]:
        answers = []
        for path in paths:
            sent: list[dict[str, Any]] = []

            async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
                sent.append(message)

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b""}

            scope = {"type": "http", "method": "GET", "path": path, "headers": []}
            await middleware(scope, receive, send)
            answers.append(sent)
        return answers

    with caplog.at_level(logging.INFO, logger="stallwatch"):
        answers = trio.run(serve, ["/a", "/b", "/c"])
    assert [a[1]["body"] for a in answers] == [b"/a", b"/b", b"/c"]
    records = [r for r in caplog.records if r.name == "stallwatch"]
    (warning,) = records
    assert warning.levelno == logging.WARNING
    assert warning.exc_info is None
    assert "watches asyncio event loops; requests pass through unwatched" in warning.getMessage()
    assert registry.get_sample_value(
        "stallwatch_internal_errors_total", {"component": "middleware"}
    ) in (None, 0.0)
