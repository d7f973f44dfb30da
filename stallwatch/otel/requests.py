"""The request's side: its server span kept on its record, stallwatch's figures and links set
on that span before it ends, the request's metrics through the Metrics API
(``RequestTelemetry``, one per middleware). Everything here runs on the loop thread.

Where the server span comes from. Inside the OpenTelemetry ASGI middleware (where
``FastAPIInstrumentor`` always puts every middleware of the app), the server span is the
current span when the request reaches stallwatch, and is read then. Outside it, the span is
started later, inside the app stallwatch awaits: a span processor added to the SDK's tracer
provider catches the first server span started in the request's own task.

When the figures go on. The OpenTelemetry middleware ends the server span as soon as the
response's last body message is sent, before the app's coroutine returns, whichever side of
it stallwatch is. So stallwatch sets its attributes as that message passes through its
``send``, with the figures as of that moment (as ``Server-Timing`` does for the response's
start), and at the request's end only where no such message was sent (a WebSocket, an error).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanKind, TracerProvider

from ..events import BACKGROUND
from ..request.tally import status_label
from ..request.tasks import CURRENT
from ..routes import method_label
from .meters import Meters, meters_for
from .stalls import LoopTelemetry, StallMark
from .traces import ServerSpan, current_server_span, exemplar, parent_context

if TYPE_CHECKING:
    from .._types import Message, Send
    from ..loop.timeline import Timeline
    from ..metrics import Metrics
    from ..request.spans import RequestSpan

LOOP_HOLD = "stallwatch.loop_hold"
FROZEN = "stallwatch.frozen"
FROZEN_BY = "stallwatch.frozen_by"


class _TracedSend:
    """The request's ``send``: sets stallwatch's figures on the server span as the last body
    message passes, then forwards every message unchanged."""

    __slots__ = ("_request", "_send", "_telemetry")

    def __init__(self, telemetry: RequestTelemetry, request: RequestSpan, send: Send) -> None:
        self._telemetry = telemetry
        self._request = request
        self._send = send

    def __call__(self, message: Message) -> Any:
        server = self._request.trace
        if server is not None and not server.annotated:
            self._telemetry.response_ending(self._request, server, message)
        return self._send(message)


class RequestTelemetry:
    """Server-span attributes, links and request instruments for one middleware."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        group_status: bool,
        on_error: Callable[[], None] = lambda: None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.meters: Meters = meters_for(metrics, meter_provider)
        self._group = group_status
        self._on_error = on_error
        self._attributes: dict[tuple[Any, str, int], tuple[dict[str, str], dict[str, str]]] = {}
        self.loop: LoopTelemetry | None = None
        """The monitor's stall spans, which the request's span links to (set at attach)."""

    def attach(self, loop: LoopTelemetry | None, on_error: Callable[[], None]) -> None:
        """Link to the stall spans of the monitor the middleware runs on; catch server spans
        started inside stallwatch, when the tracer provider is the SDK's."""
        self.loop = loop
        self._on_error = on_error
        catch_server_spans()

    # -- the request's life ----------------------------------------------------------------------

    def request_started(self, request: RequestSpan) -> None:
        request.trace = current_server_span()

    def send(self, request: RequestSpan, send: Send) -> Send:
        return _TracedSend(self, request, send)

    def response_ending(self, request: RequestSpan, server: ServerSpan, message: Message) -> None:
        """The last body message is about to go: the server span ends right after it."""
        try:
            if message["type"] != "http.response.body" or message.get("more_body", False):
                return
            now = perf_counter()
            timeline = request.timeline
            # The step sending the response is the request's own, though it is not over yet:
            # the timeline has not been told of it, and counts it as nobody's so far.
            step = timeline.in_step(now)
            frozen = dict(timeline.frozen(request, now) or ())
            background = frozen.get(BACKGROUND, 0.0)
            if background:
                left = background - min(step, background)
                if left > 1e-9:
                    frozen[BACKGROUND] = left
                else:
                    del frozen[BACKGROUND]
            self._annotate(request, server, now, max(request.longest, step), frozen, step)
        except Exception:
            self._on_error()

    def request_ended(
        self,
        request: RequestSpan,
        method: Any,
        route: str,
        status: int,
        duration: float,
        frozen: dict[str, float] | None,
    ) -> dict[str, str] | None:
        """Record the request's instruments; annotate its span if no response did; returns
        the exemplar (the request's own trace) for its Prometheus metrics."""
        server = request.trace
        context = server.context if server is not None else None
        labels = exemplar(context)
        try:
            if server is not None:
                if not server.annotated:
                    self._annotate(
                        request, server, request.ended, request.longest, frozen or {}, 0.0
                    )
                # The record outlives the request (until the loop polls, or its tasks end):
                # it keeps the span's context, not the span and all it holds.
                server.span = trace.INVALID_SPAN
            attributes, by_route = self._labels(method, route, status)
            meters = self.meters
            traced: Context | None = parent_context(context) if labels is not None else None
            meters.request_duration.record(duration, attributes, context=traced)
            meters.loop_hold.record(request.longest, by_route, context=traced)
        except Exception:
            self._on_error()
        return labels

    # -- on the span -----------------------------------------------------------------------------

    def _annotate(
        self,
        request: RequestSpan,
        server: ServerSpan,
        now: float,
        hold: float,
        frozen: dict[str, float],
        step: float,
    ) -> None:
        server.annotated = True
        span = server.span
        if not span.is_recording():
            return  # not sampled, or ended already: nothing of it is exported
        waited = float(sum(frozen.values()))
        attributes: dict[str, Any] = {LOOP_HOLD: hold, FROZEN: waited}
        if frozen:
            culprit, seconds = max(frozen.items(), key=lambda kv: kv[1])
            if seconds >= request.timeline.floor:  # as requests are counted frozen
                attributes[FROZEN_BY] = culprit
        span.set_attributes(attributes)
        for mark in self._stalls(request, server, now, step):
            span.add_link(mark.context)

    def _stalls(
        self, request: RequestSpan, server: ServerSpan, now: float, step: float
    ) -> list[StallMark]:
        """The stall spans that froze the request: those that ended in its life, and the
        stretch in progress if it is a stall already and someone else is holding it."""
        loop = self.loop
        if loop is None:
            return []
        marks = loop.stalls_during(request.start, now, server.context)
        timeline = request.timeline
        so_far = _stall_so_far(timeline, now)
        if so_far is None:
            return marks
        start, holders, traces = so_far
        if now - max(start, request.start) < loop.floor:
            return marks
        own = request.route_label()
        # The step in progress is this request's own: the timeline counts it as nobody's.
        if step:
            holders = dict(holders)
            holders[own] = holders.get(own, 0.0) + step
            if holders.get(BACKGROUND, 0.0) > step:
                holders[BACKGROUND] -= step
            else:
                holders.pop(BACKGROUND, None)
        top = max(holders.items(), key=lambda kv: kv[1])[0] if holders else BACKGROUND
        if top == own:
            return marks  # the request (or its route) holds the stall: never its own victim
        mark = loop.stall_in_progress(timeline.stretch_id, start, holders, traces)
        if mark is not None:
            marks.append(mark)
        return marks

    def _labels(
        self, method: Any, route: str, status: int
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The Prometheus labels as attributes, built once per label set."""
        key = (method, route, status)
        known = self._attributes.get(key)
        if known is None:
            name = method if method == "WEBSOCKET" else method_label(method)
            known = self._attributes[key] = (
                {"method": name, "route": route, "status": status_label(status, self._group)},
                {"route": route},
            )
        return known


# -- stallwatch outside the OpenTelemetry middleware ----------------------------------------------

_catching: weakref.WeakSet[Any] = weakref.WeakSet()


def catch_server_spans(provider: TracerProvider | None = None) -> bool:
    """Add the span processor that hands a request the server span started inside it, once
    per tracer provider (the global one by default); False where it cannot (not the SDK's)."""
    provider = trace.get_tracer_provider() if provider is None else provider
    add = getattr(provider, "add_span_processor", None)
    if add is None or provider in _catching:
        return False
    try:
        from opentelemetry.sdk.trace import SpanProcessor
    except ImportError:  # pragma: no cover - a provider with that method is the SDK's
        return False

    class ServerSpans(SpanProcessor):
        """Gives the request being served in this task the first server span started in it."""

        def on_start(self, span: Span, parent_context: Context | None = None) -> None:
            request = CURRENT.get()
            if request is None or request.trace is not None or request.done:
                return
            if getattr(span, "kind", None) is not SpanKind.SERVER:
                return
            try:
                task = asyncio.current_task()
            except RuntimeError:
                return
            # A task the request started carries it too; only the request's own task runs
            # the app that starts its server span (not a pipelined successor's).
            if task is not None and task is request.host:
                request.trace = ServerSpan(span)

    add(ServerSpans())
    _catching.add(provider)
    return True


def _stall_so_far(
    timeline: Timeline, now: float
) -> tuple[float, dict[str, float], dict[str, object]] | None:
    """If the timeline's stretch in progress is a stall already at ``now``: its start, the
    seconds each route held the loop in it so far (what no finished step did is
    ``<background>``) and its traces. A request that ends inside a stall must link to the
    stall's span now: its own span ends before the stall does."""
    if not timeline.exact:
        return None
    start = timeline.current_start()
    busy = now - start
    if busy < timeline.threshold:
        return None
    stretch = timeline.in_progress
    stretch.fold()
    holders = dict(stretch.holders)
    if busy > stretch.held:
        holders[BACKGROUND] = holders.get(BACKGROUND, 0.0) + busy - stretch.held
    return start, holders, stretch.traces()
