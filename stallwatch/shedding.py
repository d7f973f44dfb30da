"""Opt-in load shedding (``shed_lag``): while the loop runs callbacks later than ``shed_lag``,
new requests are answered ``503`` with ``Retry-After`` before they reach the app.

Past its capacity a loop serves every request later the longer the overload lasts: each new
request queues behind all the others, and all of them time out together. Refusing new work
while the loop is behind keeps the work it has admitted fast; the refused clients are told
to come back. Only *new* requests are refused: a request the app has started is never
touched (answering those 503 is what made fastapi-loopguard's strict mode unfit for
production), and the metrics, the report and ``/livez`` are never refused. Fastify's
``@fastify/under-pressure`` is the model.

The lag is the heartbeat's: how late the last beat ran, or how overdue the next one is if
that is more (a loop falling behind shows it before the beat gets to run). The decision and
the answer are pure; ``Shedder`` is the little state the middleware keeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from ._types import Scope, Send
from .pools.readings import route_label

STATUS = 503
BODY = b"Service Unavailable: the server is overloaded; retry later.\n"
MAX_RETRY_AFTER = 60


def recent_lag(last_lateness: float, overdue: float) -> float:
    """How late a callback due now would run: the last beat's lateness, or, when more, how
    far past its time the next beat is already."""
    return max(0.0, last_lateness, overdue)


def should_shed(lag: float, shed_lag: float | None) -> bool:
    """Refuse new requests while the lag is above ``shed_lag`` (never when it is None)."""
    return shed_lag is not None and lag > shed_lag


def retry_after(lag: float) -> int:
    """Seconds a refused client should wait: the lag rounded up, from 1 to 60."""
    if not lag < MAX_RETRY_AFTER:  # also NaN
        return MAX_RETRY_AFTER
    return max(1, math.ceil(lag))


def response(retry: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two ASGI messages of a refusal."""
    start = {
        "type": "http.response.start",
        "status": STATUS,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(BODY)).encode()),
            (b"retry-after", str(retry).encode()),
            (b"cache-control", b"no-store"),
        ],
    }
    return start, {"type": "http.response.body", "body": BODY}


class _Counter(Protocol):
    def labels(self, *values: str) -> Any: ...


class Shedder:
    """The middleware's shedding: ``lag`` reads the loop's recent lag (loop thread),
    ``route_of`` names a request from its scope before the app saw it."""

    def __init__(
        self,
        shed_lag: float,
        lag: Callable[[], float | None],
        route_of: Callable[[Scope], str],
        counter: _Counter,
    ) -> None:
        # The counter's children by route label: ``.labels()`` costs more than ``.inc()``.
        self._children: dict[str, Any] = {}
        self.shed_lag = shed_lag
        self._lag = lag
        self._route_of = route_of
        self._counter = counter

    def lag(self) -> float | None:
        """The lag to judge a new request by; None before the loop is watched."""
        return self._lag()

    async def refuse(self, scope: Scope, send: Send, lag: float) -> None:
        """Answer 503 and count it under the request's route."""
        route = self._route_of(scope)
        child = self._children.get(route)
        if child is None:
            route = route_label(route, self._children)  # bounded, as the pools' are
            child = self._children.get(route)
            if child is None:
                child = self._children[route] = self._counter.labels(route)
        child.inc()
        start, body = response(retry_after(lag))
        await send(start)
        await send(body)
