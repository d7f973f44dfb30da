"""``StallwatchMiddleware``: the ASGI glue between requests and the loop monitor.

Per request it opens a ``RequestSpan`` (the awaitable that times each step of the app), makes
it the current request of the context, so that every task the request starts is timed for it
too (``tasks.py``), lets the app run, and on the way out records latency, loop-hold time and
frozen time. Lifespan starts and stops the monitor; everything else passes through untouched.
Whatever goes wrong inside stallwatch is counted and logged, never raised into the request:
a scope stallwatch cannot read goes to the app exactly as it came.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ._types import ASGIApp, Message, Receive, Scope, Send
from .errors import InternalErrors
from .loop.timeline import Timeline
from .metrics import (
    LAG_BUCKETS,
    REQUEST_BUCKETS,
    Metrics,
    MetricsTaken,
    metrics_for,
    unregistered_metrics,
)
from .monitor import LoopMonitor, get_monitor
from .multiprocess import start_cleanup
from .options import middleware_options
from .request.spans import RequestSpan
from .request.tally import RequestMetrics
from .request.tasks import CURRENT, current_task
from .routes import ContainedRoutes, default_resolver
from .served import served_for

if TYPE_CHECKING:
    from .otel.requests import RequestTelemetry

logger = logging.getLogger("stallwatch")

_warned_unwatched = False


class StallwatchMiddleware:
    """Watch the event loop an ASGI app runs on, and what each route costs the others.

    Options are keyword-only: those of ``MiddlewareOptions`` (naming, exposition, the
    report) and those of ``MonitorOptions`` (how the loop is watched), both checked here.
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        # Each option is declared and checked once, in ``options.py``: a wrong name or value
        # fails here, at start-up, naming the option.
        self.options, self.monitor_options = middleware_options("StallwatchMiddleware", options)
        options_ = self.options
        route_resolver = options_.route_resolver
        registry = self.monitor_options.registry
        # The metrics first: the monitor would register them with the default request buckets.
        self._unwatched = False
        try:
            metrics = metrics_for(
                registry,
                lag_buckets=self.monitor_options.lag_buckets,
                request_buckets=options_.request_buckets,
            )
        except MetricsTaken as exc:
            # Another collector holds one of our names: that is the app's registry, and the
            # app must still start. Say so once; requests pass through unwatched.
            logger.error("%s; requests pass through unwatched", exc)
            self._unwatched = True
            metrics = unregistered_metrics(
                LAG_BUCKETS, REQUEST_BUCKETS
            )  # registered nowhere, never used
        self.metrics: Metrics = metrics
        self._errors = InternalErrors(metrics.internal_errors)  # until a monitor counts them
        self._routes = ContainedRoutes(
            route_resolver or default_resolver(app),
            bind=route_resolver is None,
            on_error=lambda: self._internal_error("middleware"),
        )
        served = served_for(
            options_,
            registry,
            metrics,
            lambda: self.monitor,
            self._routes.before_app,
            lambda: self._internal_error("middleware"),
        )
        # What is read on every request, kept at hand.
        self._metrics_app = served.metrics_app
        self._report = served.report
        self._off_loop = served.off_loop
        self._shedder = served.shedder
        self._liveness = served.liveness
        self._report_prefix = options_.report_path + "/"
        self._metrics_path = options_.metrics_path
        self._server_timing = options_.server_timing
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeline: Timeline | None = None
        self.monitor: LoopMonitor | None = None
        self._owns_monitor = False
        self._requests = RequestMetrics(self.metrics, group_status=options_.group_status)
        self._telemetry: RequestTelemetry | None = None
        if self.monitor_options.opentelemetry:
            from .otel import request_telemetry  # OpenTelemetry is imported only when asked for

            self._telemetry = request_telemetry(self.metrics, group_status=options_.group_status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._unwatched:
            await self.app(scope, receive, send)
            return
        try:
            kind = scope["type"]
            path = scope.get("path") if kind == "http" else None
        except Exception:  # not a scope stallwatch can read: the app's to answer
            kind = path = None
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self.app(scope, self._lifespan_receive(receive), send)
            else:
                await self.app(scope, receive, send)
            return
        if path is not None:
            if path == self._metrics_path and self._metrics_app is not None:
                if self.monitor is not None:
                    self.monitor.flush()
                await self._metrics_app(scope, receive, send)
                return
            report = self._report
            if report is not None and (
                path.startswith(self._report_prefix) or path == self.options.report_path
            ):
                await report(scope, receive, send)
                return
            shedder = self._shedder
            if shedder is not None:  # new requests only: nothing past this line is refused
                lag = shedder.lag()
                if lag is not None and lag > shedder.shed_lag:
                    await shedder.refuse(scope, send, lag)
                    return
        try:
            span = self._open(scope, send)
        except Exception:
            self._internal_error("middleware")
            span = None
        if span is None:
            await self.app(scope, receive, send)
            return
        # A task started inside another request's context (uvicorn starts a pipelined request
        # from the previous one's send) is this one's from here, and nobody's after it.
        inherited = CURRENT.get() is not None
        token = CURRENT.set(span)
        send_on: Send = span.asgi_send_timed if self._server_timing else span.asgi_send
        if self._telemetry is not None:
            send_on = self._telemetry.send(span, send_on)  # its figures go on before it ends
        try:
            await span.wrap(self.app(scope, receive, send_on))
        finally:
            CURRENT.reset(token)
            if inherited:
                CURRENT.set(None)
            self._close(span, perf_counter())

    # -- per request -----------------------------------------------------------------------

    def _open(self, scope: Scope, send: Send) -> RequestSpan | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio, or anything else that is not an asyncio loop
            _warn_unwatched()
            return None
        routes = self._routes
        if routes.unbound:
            routes.bind(scope)
        timeline = self._timeline
        monitor = self.monitor
        if loop is not self._loop or timeline is None or monitor is None or not monitor.running:
            timeline = self._attach(loop)
        span = RequestSpan(timeline, scope, send, routes)
        # The server's task runs the app's own coroutine, which the span times itself.
        span.host = current_task(loop)
        timeline.request_started(span)
        telemetry = self._telemetry
        if telemetry is not None:
            try:
                telemetry.request_started(span)  # its server span, while its context is here
            except Exception:
                self._internal_error("otel")
        return span

    def _close(self, span: RequestSpan, end: float) -> None:
        try:
            timeline = span.timeline
            timeline.request_ended(span, end)
            scope = span.scope
            kind = scope.get("type")
            route = span.route_label()
            frozen = timeline.frozen(span, end)
            method = "WEBSOCKET" if kind == "websocket" else scope.get("method")
            status = span.status or 500
            duration = end - span.start
            telemetry = self._telemetry
            exemplar = (
                telemetry.request_ended(span, method, route, status, duration, frozen)
                if telemetry is not None
                else None
            )
            self._requests.add(
                method,
                route,
                status,
                duration,
                span.longest,
                span.busy,
                frozen,
                timeline.floor,
                exemplar,
            )
            span.release()
        except Exception:
            self._internal_error("middleware")

    def flush(self) -> None:
        """Hand the requests counted since the last flush to prometheus-client (loop thread)."""
        try:
            timeline = self._timeline
            late = timeline.take_late_busy() if timeline is not None else None
            self._requests.flush(late, self.monitor.history if self.monitor else None)
        except Exception:
            self._internal_error("middleware")

    # -- the monitor's life cycle ------------------------------------------------------------

    def _attach(self, loop: asyncio.AbstractEventLoop) -> Timeline:
        monitor = get_monitor(loop)
        if monitor is None:
            monitor = LoopMonitor(loop, options=self.monitor_options)
            monitor.start()
            self._owns_monitor = True
        self.monitor = monitor
        monitor.add_flusher(self.flush)
        if self._telemetry is not None:
            self._telemetry.attach(monitor.telemetry, lambda: self._internal_error("otel"))
        self._loop = loop
        self._timeline = monitor.timeline
        if self._off_loop is not None:
            self._off_loop.start()
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
            except RuntimeError:
                _warn_unwatched()
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
        if self._off_loop is not None:
            self._off_loop.stop()

    def _internal_error(self, component: str) -> None:
        monitor = self.monitor
        (monitor.errors if monitor is not None else self._errors).error(component)


def _warn_unwatched() -> None:
    global _warned_unwatched
    if not _warned_unwatched:
        _warned_unwatched = True
        logger.warning(
            "stallwatch watches asyncio event loops; requests pass through unwatched "
            "(this server runs another event loop, such as trio)"
        )
