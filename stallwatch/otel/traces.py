"""What the stall spans and the request spans share: span contexts, exemplars, clocks.

The rule for what leaves the process: a request no tracer samples has its span context kept
(a stall it causes is offered to the tracer as a child of that context, and the tracer's
sampler, ``ParentBased`` by default, drops it), but it gets no attributes, no links and no
exemplar: an exemplar must point to a trace that exists.
"""

from __future__ import annotations

import time
from time import perf_counter

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanContext

TRACER_NAME = "stallwatch"
"""The instrumentation scope of stallwatch's spans and instruments."""

ROOT = Context()
"""An empty context: a span started in it is the root of a new trace."""


class ServerSpan:
    """A request's server span, as its record keeps it (``RequestSpan.trace``).

    The span, to set attributes and links on it before it ends (let go of when the request
    ends); its context, read once, for the stall it may cause and the exemplars of its
    metrics, after it ended too.
    """

    __slots__ = ("annotated", "context", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.context: SpanContext = span.get_span_context()
        self.annotated = False
        """Set once stallwatch's attributes and links are on the span: they go on once."""


def current_server_span() -> ServerSpan | None:
    """The span of the context the request arrived in, when it has a valid context (the
    OpenTelemetry ASGI middleware outside stallwatch made it current), else None."""
    span = trace.get_current_span()
    return ServerSpan(span) if span.get_span_context().is_valid else None


def context_of(trace: object) -> SpanContext | None:
    """The span context of a request's ``trace`` (None: the request was not traced)."""
    return trace.context if isinstance(trace, ServerSpan) else None


def parent_context(span_context: SpanContext | None) -> Context:
    """A context whose current span is ``span_context`` (a new trace where there is none)."""
    if span_context is None or not span_context.is_valid:
        return ROOT
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), ROOT)


def exemplar(span_context: SpanContext | None) -> dict[str, str] | None:
    """The exemplar labels (``trace_id``, ``span_id``) of a sampled span, else None.

    63 characters: within OpenMetrics' 128 for an exemplar's labels. ``trace_id`` is the
    name Grafana's exemplar link looks for by default.
    """
    if span_context is None or not span_context.trace_flags.sampled:
        return None
    return {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}


def wall_ns(at: float) -> int:
    """A ``perf_counter`` reading as OpenTelemetry's clock (nanoseconds since the epoch).

    Stretches are timed on the monotonic clock; spans are stamped on the wall clock. The
    two are related once, now: the span's duration stays the monotonic one.
    """
    return time.time_ns() - round((perf_counter() - at) * 1e9)
