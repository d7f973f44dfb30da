"""Serving ``/metrics``: from the app, or from a thread of its own that a held loop cannot stop.

A scrape answered by the event loop times out exactly while the loop is stalled, which is
when the stall gauge matters most; ``start_metrics_server`` answers from its own thread, and
serves the stall report there too when given one, so the report answers while the loop is held.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, make_wsgi_app

from ._types import ASGIApp, PlainRequest, Receive, Response, Scope, Send
from .monitor import get_monitor
from .multiprocess import MultiProcessCollector  # reads under the dead-worker cleanup's lock
from .options import check_port

logger = logging.getLogger("stallwatch")


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


class ReportResponder(Protocol):
    """What the off-loop server needs of the report (``report.http.ReportApp``)."""

    def handles(self, path: str) -> bool: ...

    def respond(self, request: PlainRequest) -> Response: ...


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # A thread per connection, not joined at close: a slow client must not hold up shutdown.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # an access line per scrape would flood the application's stderr


_Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _wsgi_app(
    registry: CollectorRegistry,
    report: ReportResponder | None,
    liveness: ReportResponder | None = None,
) -> _Wsgi:
    """prometheus-client's own WSGI app for every path (content negotiation, gzip, ``name[]``
    filters), except ``/livez`` and the report's paths, which they answer."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        responder = liveness if liveness is not None and liveness.handles(path) else report
        if responder is None or not responder.handles(path):
            result: Iterable[bytes] = metrics(environ, start_response)
            return result
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        status, response_headers, body = responder.respond(
            PlainRequest(
                environ.get("REQUEST_METHOD", "GET"),
                path,
                headers,
                environ.get("REMOTE_ADDR"),
                environ.get("QUERY_STRING", ""),
            )
        )
        start_response(f"{status} {_reason(status)}", response_headers)
        return [body]

    return app


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def start_metrics_server(
    port: int,
    host: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
    report: ReportResponder | None = None,
    liveness: ReportResponder | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve the metrics (and ``report``'s paths, if given) on ``host:port`` from a daemon
    thread; returns (server, thread). Stop it with ``server.shutdown(); server.server_close()``.

    Bind to loopback (the default) unless the port is meant to be reached from outside.
    """
    check_port(port)

    class Server(_ThreadingServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    app = _wsgi_app(exposition_registry(registry), report, liveness)
    server = make_server(host.strip("[]"), port, app, Server, handler_class=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, name="stallwatch-metrics-server", daemon=True
    )
    thread.start()
    return server, thread


class OffLoopServer:
    """The middleware's ``metrics_port`` server: metrics, the report and ``/livez`` from a
    thread of its own, so they answer while the loop is held. Started once, when the app
    starts; a port already taken is one warning naming it, and the app serves on without."""

    def __init__(
        self,
        port: int,
        host: str,
        registry: CollectorRegistry | None,
        report: ReportResponder | None,
        liveness: Callable[[], ReportResponder],
    ) -> None:
        self.port: int | None = port
        self._host = host
        self._registry = registry
        self._report = report
        self._liveness = liveness
        self._server: WSGIServer | None = None

    def start(self) -> None:
        port = self.port
        if port is None or self._server is not None:
            return
        try:
            self._server, _ = start_metrics_server(
                port, self._host, self._registry, report=self._report, liveness=self._liveness()
            )
        except OSError as exc:
            # Tried once (with many workers only the first binds: docs/deployment.md says to
            # use metrics_path there).
            self.port = None
            logger.warning(
                "stallwatch: cannot serve metrics on %s:%s (%s); serving without it",
                self._host,
                port,
                exc.strerror or exc,
            )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
