"""The ``Server-Timing`` header: a request's loop time, shown by browser devtools and APMs.

``loop-hold`` is how long the request's own steps (its tasks' included) held the loop so
far; ``loop-frozen`` how long it waited while other work held the loop. Both in
milliseconds, as the header's ``dur`` requires, at the moment the response starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._types import Message

if TYPE_CHECKING:
    from .spans import RequestSpan


def with_server_timing(span: RequestSpan, message: Message, now: float) -> Message:
    """A copy of the ``http.response.start`` message with the header added (the app's own
    message and headers list are left as they were)."""
    frozen = span.timeline.frozen(span, now)
    frozen_ms = sum(frozen.values()) * 1e3 if frozen else 0.0
    value = f"loop-hold;dur={span.busy * 1e3:.3f}, loop-frozen;dur={frozen_ms:.3f}"
    headers = list(message.get("headers") or ())
    headers.append((b"server-timing", value.encode("latin-1")))
    copied = dict(message)
    copied["headers"] = headers
    return copied
