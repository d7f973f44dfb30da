"""Options are declared once (``options.py``) and checked where they are written: a wrong value
is an error at construction that names the option, never a failure later inside a request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stallwatch import LoopMonitor, MonitorOptions, StallwatchMiddleware


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def fresh(**options: Any) -> StallwatchMiddleware:
    options.setdefault("registry", CollectorRegistry())
    return StallwatchMiddleware(app, **options)


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("interval", 0, ValueError),
        ("interval", "fast", ValueError),
        ("stall_threshold", True, ValueError),
        ("floor", 1.0, ValueError),  # above the stall threshold
        ("sample_interval", 5, ValueError),
        ("history", 0, ValueError),
        ("history", 2.5, ValueError),
        ("log_burst", 0, ValueError),
        ("registry", "x", TypeError),
        ("lag_buckets", (0.1, 0.05), ValueError),
        ("lag_buckets", "0.1", TypeError),
        ("in_app_include", "myapp", TypeError),
        ("in_app_include", ("",), ValueError),
        ("in_app_include", ("no_such_package_anywhere",), ValueError),
        ("route_resolver", "x", TypeError),
        ("request_buckets", (-1.0,), ValueError),
        ("metrics_path", "metrics", ValueError),
        ("metrics_port", 70000, ValueError),
        ("metrics_port", True, ValueError),
        ("report", "yes", TypeError),
        ("report_path", "/_stallwatch/", ValueError),
        ("report_path", "stalls", ValueError),
        ("report_token", "", ValueError),
        ("server_timing", 1, TypeError),
        ("group_status", None, TypeError),
    ],
)
def test_a_bad_value_is_an_error_naming_the_option(
    option: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=option):
        fresh(**{option: value})


def test_an_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="stall_treshold"):
        fresh(stall_treshold=0.05)
    with pytest.raises(TypeError, match="metrics_path"):
        LoopMonitor(metrics_path="/metrics")  # the middleware's, not the monitor's


def test_the_middleware_takes_every_monitor_option() -> None:
    middleware = fresh(sample_interval=0.002, history=7, interval=0.02, log_every=1.0)
    assert middleware.monitor_options == MonitorOptions(
        sample_interval=0.002,
        history=7,
        interval=0.02,
        log_every=1.0,
        registry=middleware.monitor_options.registry,
    )


def test_the_monitor_takes_keywords_or_one_options_record_not_both() -> None:
    options = MonitorOptions(stall_threshold=0.05)
    assert LoopMonitor(options=options).stall_threshold == 0.05
    assert LoopMonitor(stall_threshold=0.05).options == options
    with pytest.raises(TypeError):
        LoopMonitor(options=options, interval=0.02)


def test_a_metrics_port_in_use_is_one_warning_naming_it_and_the_app_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        middleware = fresh(metrics_port=port)

        async def two_requests() -> list[int]:
            statuses = []
            for _ in range(2):
                sent: list[dict[str, Any]] = []

                async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
                    sent.append(message)

                async def receive() -> dict[str, Any]:
                    return {"type": "http.request", "body": b""}

                scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
                await middleware(scope, receive, send)
                statuses.append(sent[0]["status"])
            assert middleware.monitor is not None
            middleware.monitor.stop()
            return statuses

        with caplog.at_level(logging.WARNING, logger="stallwatch"):
            assert asyncio.run(two_requests()) == [204, 204]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(port) in warnings[0].getMessage()
    assert warnings[0].exc_info is None  # a warning, not an internal error's traceback
    registry = middleware.monitor_options.registry
    assert registry is not None
    assert registry.get_sample_value(
        "stallwatch_internal_errors_total", {"component": "metrics-server"}
    ) in (None, 0.0)
