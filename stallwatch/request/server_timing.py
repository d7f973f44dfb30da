"""The ``Server-Timing`` header: a request's loop time, shown by browser devtools and APMs.

``loop-hold`` is how long the request's own steps (its tasks' included) held the loop so
far; ``loop-frozen`` how long it waited while other work held the loop. Both in
milliseconds, as the header's ``dur`` requires, at the moment the response starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._types import Message

if TYPE_CHECKING:
    from .spans import RequestSpan


def with_server_timing(span: RequestSpan, message: Message, now: float) -> Message:
    """A copy of the ``http.response.start`` message with the header added (the app's own
    message and headers list are left as they were)."""
    timeline = span.timeline
    # The step sending the response is the request's own, though it is not over yet: the
    # timeline has not been told about it, and would count it as someone else's.
    in_step = max(0.0, now - timeline.step_began)
    frozen = timeline.frozen(span, now)
    frozen_ms = max(0.0, sum(frozen.values()) - in_step) * 1e3 if frozen else 0.0
    hold_ms = (span.busy + in_step) * 1e3
    value = f"loop-hold;dur={hold_ms:.3f}, loop-frozen;dur={frozen_ms:.3f}"
    headers = list(message.get("headers") or ())
    headers.append((b"server-timing", value.encode("latin-1")))
    copied = dict(message)
    copied["headers"] = headers
    return copied
