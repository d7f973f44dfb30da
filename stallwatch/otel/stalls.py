"""Stalls on the culprit's trace: one ``event loop stall`` span per stall, and the loop's
metrics through the OpenTelemetry Metrics API (``LoopTelemetry``, one per monitor).

Threads. A stall's span is *started* on the loop thread, the moment the loop sees the stretch
end (or earlier, when a request ends inside a stretch that is a stall already): its start is
back-dated to the stretch's start, its parent is the server span of the request that held the
loop longest (kept on the request's record: the culprit may have ended since, and no thread
but the request's own can read its context variables), a root span when no request did
(``<background>``). So its span context exists before any request it froze can end, and each
of them links to it. The watchdog thread *ends* it once it has built the stall's event (the
cause, the line, the stack), at the stretch's end: exporting happens off the loop thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanContext, SpanKind, TracerProvider

from ..decisions import culprits
from ..events import Frame, StallEvent
from .meters import Meters, Teed, meters_for
from .traces import TRACER_NAME, context_of, exemplar, parent_context, wall_ns

if TYPE_CHECKING:
    from ..loop.stretch import Stretch
    from ..metrics import Metrics

STALL_SPAN = "event loop stall"
RECENT = 256
"""Stall spans a finishing request may still link to; older ones froze nobody alive now
(at one stall per threshold, 256 stalls are at least five seconds)."""
OPEN = 256
"""Stall spans started and not yet ended: more means the watchdog dropped their events."""


@dataclass(frozen=True, slots=True)
class StallMark:
    """A sampled stall span that a request alive during its stretch links to."""

    start: float  # perf_counter, the stretch's
    end: float
    context: SpanContext
    culprit: SpanContext | None
    """The culprit request's span context: that request is the stall's parent, not its victim."""


@dataclass(frozen=True, slots=True)
class _Open:
    span: Span
    start_ns: int
    culprit: SpanContext | None


def stacktrace(frames: tuple[Frame, ...]) -> str:
    """A stack as Python prints a traceback, innermost last (``code.stacktrace``)."""
    lines = ["Traceback (most recent call last):"]
    lines += [f'  File "{f.filename}", line {f.lineno}, in {f.function}' for f in frames]
    return "\n".join(lines)


def stall_attributes(event: StallEvent, *, stacks: bool) -> dict[str, Any]:
    """What a stall span says: why, who, and the line (semantic conventions' ``code.*``)."""
    attributes: dict[str, Any] = {
        "stallwatch.cause": event.cause,
        "stallwatch.culprit": event.culprit,
        "stallwatch.allowed": event.allowed,
        "stallwatch.victims": sum(event.victims.values()),
    }
    frame = event.top_frame
    if frame is not None:
        attributes["code.function.name"] = frame.function
        attributes["code.file.path"] = frame.filename
        attributes["code.line.number"] = frame.lineno
    if event.started_by is not None:
        attributes["stallwatch.started_by"] = str(event.started_by)
    if stacks and event.stacks:
        attributes["code.stacktrace"] = stacktrace(event.stacks[0].frames)
    return attributes


class LoopTelemetry:
    """Stall spans and the loop's instruments for one monitor."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        floor: float,
        stacks: bool,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        # The global providers by default: a provider the app sets later is used from then on
        # (the API's proxies forward to it).
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self.meters: Meters = meters_for(metrics, meter_provider)
        self.floor = floor
        self.stacks = stacks
        """Whether ``code.stacktrace`` goes out with the spans (``opentelemetry_stacks``)."""
        self._recent: deque[StallMark] = deque(maxlen=RECENT)  # loop thread only
        self._early: tuple[int, Span, int, SpanContext | None] | None = None  # loop thread only
        self._open: dict[int, _Open] = {}  # loop thread adds, watchdog thread takes
        self._lock = threading.Lock()

    # -- the loop thread ------------------------------------------------------------------------

    def lag(self, seconds: float) -> None:
        self.meters.lag.record(seconds)

    def teed_pool_histograms(self, metrics: Metrics) -> tuple[Teed, Teed]:
        """The pools' queue-wait and run histograms, recording into their OpenTelemetry
        twins too (the pools observe them on their own threads)."""
        names = ("pool", "route")
        return (
            Teed(metrics.executor_queue_wait, self.meters.executor_queue_wait, names),
            Teed(metrics.executor_run, self.meters.executor_run, names),
        )

    def stall_in_progress(
        self,
        stretch_id: int,
        start: float,
        holders: Mapping[str, float],
        traces: Mapping[str, Any],
    ) -> StallMark | None:
        """The span of the stretch in progress, which is a stall already, for a request that
        ends inside it (its span ends before the stretch does and must link to it now)."""
        early = self._early
        if early is None or early[0] != stretch_id:
            culprit, _ = culprits(holders, 0.0)
            parent = context_of(traces.get(culprit))
            span, start_ns = self._start(start, culprit, parent)
            self._early = early = (stretch_id, span, start_ns, parent)
        context = early[1].get_span_context()
        if not context.trace_flags.sampled:
            return None
        return StallMark(start, float("inf"), context, early[3])

    def stall_ended(self, stretch: Stretch, stretch_id: int) -> SpanContext | None:
        """Start the span of a stall the loop has just seen end (unless a request ending
        inside it started it already); returns its context, for the stall's event."""
        early, self._early = self._early, None
        if early is not None and early[0] == stretch_id:
            _, span, start_ns, parent = early
        else:
            culprit, _ = culprits(stretch.holders, stretch.duration)
            parent = context_of(stretch.traces.get(culprit))
            span, start_ns = self._start(stretch.start, culprit, parent)
        context = span.get_span_context()
        if not context.is_valid:
            return None  # no tracer: nothing to end, nothing to link to
        if context.trace_flags.sampled:
            self._recent.append(StallMark(stretch.start, stretch.end, context, parent))
        with self._lock:
            self._open[context.span_id] = _Open(span, start_ns, parent)
            while len(self._open) > OPEN:
                del self._open[next(iter(self._open))]
        return context

    def stalls_during(self, start: float, end: float, own: SpanContext | None) -> list[StallMark]:
        """The sampled stall spans that froze a request alive from ``start`` to ``end``
        (perf_counter) for at least the floor; not those the request caused itself."""
        found = []
        own_id = own.span_id if own is not None else 0
        for mark in reversed(self._recent):
            if mark.end <= start:
                break  # marks are in the order the stretches ended
            if min(mark.end, end) - max(mark.start, start) < self.floor:
                continue
            if mark.culprit is not None and mark.culprit.span_id == own_id:
                continue
            found.append(mark)
        return found

    def _start(self, start: float, culprit: str, parent: SpanContext | None) -> tuple[Span, int]:
        start_ns = wall_ns(start)
        span = self.tracer.start_span(
            STALL_SPAN,
            context=parent_context(parent),
            kind=SpanKind.INTERNAL,
            attributes={"stallwatch.culprit": culprit},
            start_time=start_ns,
        )
        return span, start_ns

    # -- the watchdog thread --------------------------------------------------------------------

    def stall_recorded(self, event: StallEvent) -> dict[str, str] | None:
        """End the stall's span with what the watchdog found, record its duration; returns
        the exemplar (the culprit request's trace) for the Prometheus histogram."""
        opened: _Open | None = None
        context = event.trace
        if isinstance(context, SpanContext):
            with self._lock:
                opened = self._open.pop(context.span_id, None)
        culprit = opened.culprit if opened is not None else None
        if opened is not None:
            span = opened.span
            if span.is_recording():
                span.set_attributes(stall_attributes(event, stacks=self.stacks))
            span.end(end_time=opened.start_ns + round(event.duration * 1e9))
        labels = exemplar(culprit)
        self.meters.stall_duration.record(
            event.duration,
            {"culprit": event.culprit, "cause": event.cause},
            context=parent_context(culprit) if labels is not None else None,
        )
        return labels
