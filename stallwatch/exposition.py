"""Serving ``/metrics``: from the app, or from a thread of its own that a held loop cannot stop.

A scrape answered by the event loop times out exactly while the loop is stalled, which is
when the stall gauge matters most; ``start_metrics_server`` answers from its own thread.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, start_http_server

from ._types import ASGIApp, Receive, Scope, Send
from .monitor import get_monitor
from .multiprocess import MultiProcessCollector  # reads under the dead-worker cleanup's lock


def multiprocess_dir() -> str | None:
    """prometheus-client's multiprocess directory, when this process runs in that mode."""
    # prometheus-client still honours the old lower-case name; so do we.
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir"  # noqa: SIM112
    )


def exposition_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """What a scrape should read: the given registry, all workers' files, or the default."""
    if registry is not None:
        return registry
    if multiprocess_dir():
        collected = CollectorRegistry()
        MultiProcessCollector(collected)
        return collected
    return REGISTRY


def metrics_app(registry: CollectorRegistry | None = None) -> ASGIApp:
    """An ASGI app serving the metrics, e.g. ``app.mount("/metrics", metrics_app())``."""
    inner: ASGIApp = make_asgi_app(registry=exposition_registry(registry))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        monitor = get_monitor()
        if monitor is not None:
            monitor.flush()  # what the middleware counted but has not handed over yet
        await inner(scope, receive, send)

    return app


def start_metrics_server(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[Any, threading.Thread]:
    """Serve the metrics on ``host:port`` from a daemon thread; returns (server, thread).

    Bind to loopback (the default) unless the port is meant to be reached from outside.
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"metrics port must be an integer from 0 to 65535, got {port!r}")
    server, thread = start_http_server(port, addr=host, registry=exposition_registry(registry))
    return server, thread
