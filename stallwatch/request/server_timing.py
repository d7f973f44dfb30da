"""The ``Server-Timing`` header: a request's loop time, shown by browser devtools and APMs.

``loop-hold`` is how long the request's own steps (its tasks' included) held the loop so
far; ``loop-frozen`` how long it waited while other work held the loop. Both in
milliseconds, as the header's ``dur`` requires, at the moment the response starts.
"""

from __future__ import annotations

from .._types import Message


def with_server_timing(message: Message, hold: float, frozen: float) -> Message:
    """A copy of the ``http.response.start`` message with the header added, for ``hold``
    and ``frozen`` seconds (the app's own message and headers list are left as they were)."""
    value = f"loop-hold;dur={hold * 1e3:.3f}, loop-frozen;dur={frozen * 1e3:.3f}"
    headers = list(message.get("headers") or ())
    headers.append((b"server-timing", value.encode("latin-1")))
    copied = dict(message)
    copied["headers"] = headers
    return copied
