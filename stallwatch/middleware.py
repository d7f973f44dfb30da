"""``StallwatchMiddleware``: the ASGI glue between requests and the loop monitor.

Per request it opens a ``RequestSpan`` (the awaitable that times each step of the app), lets
the app run, and on the way out records latency, loop-hold time and frozen time. Lifespan
starts and stops the monitor; everything else passes through untouched. Whatever goes wrong
inside stallwatch is counted and logged, never raised into the request.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry

from ._types import ASGIApp, Message, Receive, Scope, Send
from .exposition import metrics_app, start_metrics_server
from .metrics import Metrics, metrics_for
from .monitor import LoopMonitor, get_monitor
from .multiprocess import start_cleanup
from .routes import UNMATCHED, RouteResolver, StarletteRoutes, method_label
from .spans import RequestSpan
from .tally import RequestTally
from .timeline import Timeline

logger = logging.getLogger("stallwatch")


class StallwatchMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        interval: float = 0.010,
        stall_threshold: float = 0.020,
        floor: float = 0.001,
        lag_buckets: tuple[float, ...] | None = None,
        request_buckets: tuple[float, ...] | None = None,
        route_resolver: RouteResolver | None = None,
        metrics_path: str | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        self.app = app
        self._monitor_options: dict[str, Any] = {
            "interval": interval,
            "stall_threshold": stall_threshold,
            "floor": floor,
            "registry": registry,
            "lag_buckets": lag_buckets,
        }
        # The metrics first: the monitor would register them with the default request buckets.
        self.metrics: Metrics = metrics_for(
            registry, lag_buckets=lag_buckets, request_buckets=request_buckets
        )
        LoopMonitor(**self._monitor_options)  # validates the options now, not on startup
        if metrics_path is not None and not metrics_path.startswith("/"):
            raise ValueError(f"metrics_path must start with '/', got {metrics_path!r}")
        if metrics_port is not None and (
            not isinstance(metrics_port, int) or not 0 <= metrics_port <= 65535
        ):
            raise ValueError(f"metrics_port must be an integer 0-65535, got {metrics_port!r}")
        self._registry = registry
        self._resolver: RouteResolver = route_resolver or StarletteRoutes(app)
        self._resolve: RouteResolver = self._contained_resolve  # bound once, not per request
        self._bind_app = route_resolver is None and not hasattr(app, "routes")
        self._metrics_path = metrics_path
        self._metrics_app = metrics_app(registry) if metrics_path is not None else None
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        self._metrics_server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeline: Timeline | None = None
        self.monitor: LoopMonitor | None = None
        self._owns_monitor = False
        self._requests: dict[tuple[str, str, int], RequestTally] = {}
        self._pending = False
        self._frozen: dict[tuple[str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self.app(scope, self._lifespan_receive(receive), send)
            else:
                await self.app(scope, receive, send)
            return
        if self._metrics_app is not None and scope["path"] == self._metrics_path:
            if self.monitor is not None:
                self.monitor.flush()
            await self._metrics_app(scope, receive, send)
            return
        try:
            span = self._open(scope, send)
        except Exception:
            self._internal_error("middleware")
            await self.app(scope, receive, send)
            return
        try:
            await span.wrap(self.app(scope, receive, span.asgi_send))
        finally:
            self._close(span, perf_counter())

    # -- per request -----------------------------------------------------------------------

    def _open(self, scope: Scope, send: Send) -> RequestSpan:
        if self._bind_app:
            self._bind(scope)
        loop = asyncio.get_running_loop()
        timeline = self._timeline
        monitor = self.monitor
        if loop is not self._loop or timeline is None or monitor is None or not monitor.running:
            timeline = self._attach(loop)
        span = RequestSpan(timeline, scope, send, self._resolve, perf_counter())
        timeline.in_flight.add(span)
        return span

    def _close(self, span: RequestSpan, end: float) -> None:
        try:
            timeline = span.timeline
            timeline.in_flight.discard(span)
            route = span.final_route()
            scope = span.scope
            method = "WEBSOCKET" if scope["type"] == "websocket" else method_label(scope["method"])
            key = (method, route, span.status or 500)
            tally = self._requests.get(key)
            if tally is None:
                tally = self._tally(key)
            tally.add(end - span.start, span.longest, span.busy)
            self._pending = True
            frozen = timeline.frozen(span, end)
            if frozen:
                floor = timeline.floor
                for culprit, seconds in frozen.items():
                    pair = self._frozen.get((route, culprit))
                    if pair is None:
                        pair = self._frozen[(route, culprit)] = (
                            self.metrics.frozen_seconds.labels(route, culprit),
                            self.metrics.frozen_requests.labels(route, culprit),
                        )
                    pair[0].inc(seconds)
                    if seconds >= floor:
                        pair[1].inc()
        except Exception:
            self._internal_error("middleware")

    def _tally(self, key: tuple[str, str, int]) -> RequestTally:
        method, route, status = key
        metrics = self.metrics
        tally = self._requests[key] = RequestTally(
            metrics.request_duration.labels(method, route, str(status)),
            metrics.loop_hold.labels(route),
            metrics.loop_busy.labels(route),
        )
        return tally

    def flush(self) -> None:
        """Hand the requests counted since the last flush to prometheus-client (loop thread)."""
        if not self._pending:
            return
        self._pending = False
        try:
            for tally in self._requests.values():
                tally.flush()
        except Exception:
            self._internal_error("middleware")

    # -- the monitor's life cycle ------------------------------------------------------------

    def _bind(self, scope: Scope) -> None:
        """Give the route resolver the application's route tree, to name mounted routes."""
        self._bind_app = False
        top = scope.get("app")
        if isinstance(self._resolver, StarletteRoutes) and hasattr(top, "routes"):
            self._resolver.app = top

    def _contained_resolve(self, scope: Scope) -> str | None:
        # The timeline names routes from inside the loop's poll, where an exception would
        # stop the event loop: a resolver that raises (a user's) names the request unmatched.
        try:
            return self._resolver(scope)
        except Exception:
            self._internal_error("middleware")
            return UNMATCHED

    def _attach(self, loop: asyncio.AbstractEventLoop) -> Timeline:
        monitor = get_monitor(loop)
        if monitor is None:
            monitor = LoopMonitor(loop, **self._monitor_options)
            monitor.start()
            self._owns_monitor = True
        self.monitor = monitor
        monitor.add_flusher(self.flush)
        self._loop = loop
        self._timeline = monitor.timeline
        self._start_metrics_server()
        start_cleanup()  # dead workers' metric files; a no-op unless in multiprocess mode
        return monitor.timeline

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def observed() -> Message:
            message = await receive()
            try:
                kind = message.get("type")
                if kind == "lifespan.startup":
                    self._attach(asyncio.get_running_loop())
                elif kind == "lifespan.shutdown":
                    self._shutdown()
            except Exception:
                self._internal_error("lifespan")
            return message

        return observed

    def _shutdown(self) -> None:
        if self.monitor is not None:
            self.flush()
            self.monitor.remove_flusher(self.flush)
        if self.monitor is not None and self._owns_monitor:
            self.monitor.stop()
        self.monitor = None
        self._timeline = None
        self._loop = None
        self._owns_monitor = False
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None

    def _start_metrics_server(self) -> None:
        if self._metrics_port is None or self._metrics_server is not None:
            return
        try:
            self._metrics_server, _ = start_metrics_server(
                self._metrics_port, self._metrics_host, self._registry
            )
        except OSError:
            self._metrics_port = None  # tried once; the app keeps serving without it
            self._internal_error("metrics-server")

    def _internal_error(self, component: str) -> None:
        if self.monitor is not None:
            self.monitor.internal_error(component)
            return
        try:
            self.metrics.internal_errors.labels(component).inc()
            logger.exception("stallwatch: internal error in %s (counted, not raised)", component)
        except Exception:  # pragma: no cover
            pass
