"""One request's time on the event loop: its steps, its status, what froze it.

A request's own coroutine (the app, as the middleware awaits it inside the server's task) is
timed by its ``RequestSpan``, which stands between the middleware and the app: the server's
task resumes it, it resumes the app and times how long that step held the loop. Every task
the request starts, directly or through its children, is timed step by step where the loop
schedules the step (``tasks.py``), and adds to the same span. A step that runs inside
another timed step is taken out of the outer one, so no second is counted twice.
Everything here runs on the loop thread only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .._types import Message, Scope, Send
from ..loop.steps import TimedAwait
from ..routes import UNMATCHED, RouteResolver
from .server_timing import with_server_timing

if TYPE_CHECKING:
    from ..loop.timeline import Timeline


def _released(message: Message) -> Awaitable[None]:
    raise RuntimeError("this request has ended")


def _no_name(scope: Scope) -> None:
    return None


_RELEASED: Scope = {}


class RequestSpan(TimedAwait):
    """A request: its route, status and loop time; the timed await of its own coroutine."""

    __slots__ = (
        "_resolve",
        "_send",
        "base",
        "base_less",
        "base_seq",
        "ended",
        "ended_in",
        "host",
        "own_long",
        "route",
        "scope",
        "start",
        "status",
        "trace",
    )

    timeline: Timeline
    ended: float
    ended_in: int

    def __init__(
        self, timeline: Timeline, scope: Scope, send: Send, resolve: RouteResolver
    ) -> None:
        self.host: object = None
        """The server's task that runs the request's own coroutine (set by the middleware)."""
        self.timeline = timeline
        self.scope = scope
        self._send = send
        self._resolve = resolve
        self.start, self.base_seq, self.base, self.base_less = timeline.origin()
        self.busy = 0.0
        """Loop seconds of all the request's steps, its tasks' included."""
        self.longest = 0.0
        """The longest of those steps: how long the request held the loop at once."""
        self.own_long = 0.0
        """Seconds the request held the loop inside long stretches already logged."""
        # The timeline's bookkeeping for the stretch in progress (see Timeline.run_step):
        # no stretch yet, so its first step sets ``stretch_time`` and ``folded``.
        self.stretch_id = -1
        self.route: str | None = None
        self.status = 0
        self.done = False
        """Set when the response ended; tasks it started may still run and be charged.
        ``ended`` and ``ended_in`` (when, and in which of the timeline's stretches) are set
        with it, and read only once it is."""
        self.trace: Any = None
        """With ``opentelemetry=True``: the request's server span (``otel.traces.ServerSpan``),
        kept here because no thread but the request's own can read its context."""

    def release(self) -> None:
        """The request has ended: let go of everything but the figures.

        The span can live on after its request (the timeline keeps it until the loop polls,
        a task the request started keeps it as long as it runs); without this it would keep
        the request's scope, coroutine, send and server task alive that long, and made
        collections several times as frequent under load (benchmarks/gc_tail.py).
        """
        self.host = None
        if self.route is None:
            self.route = UNMATCHED  # named now or never: the resolver needs the scope
        self.scope = _RELEASED
        self.drop_coro()
        self._send = _released
        self._resolve = _no_name

    # -- the send wrapper: the status, nothing else ------------------------------------------

    def asgi_send(self, message: Message) -> Awaitable[None]:
        # A plain function returning the server's own awaitable: no coroutine of ours per send.
        if not self.status:
            self._see(message)
        return self._send(message)

    def asgi_send_timed(self, message: Message) -> Awaitable[None]:
        """``asgi_send`` that also adds the ``Server-Timing`` header to the response start."""
        if not self.status and self._see(message) == "http.response.start":
            # A message we cannot copy goes on unchanged: the server's to judge.
            with contextlib.suppress(Exception):
                timeline = self.timeline
                now = perf_counter()
                # The step sending the response is the request's own, though it is not over
                # yet: the timeline has not been told of it, and would count it as another's.
                in_step = timeline.in_step(now)
                frozen = timeline.frozen(self, now)
                waited = max(0.0, sum(frozen.values()) - in_step) if frozen else 0.0
                message = with_server_timing(message, self.busy + in_step, waited)
        return self._send(message)

    def _see(self, message: Message) -> object:
        """Take the status from a response start; whatever the app sent goes to the server
        as it is, and a message that breaks the spec is the server's to refuse, not ours."""
        try:
            kind = message["type"]
            if kind == "http.response.start" or kind == "websocket.http.response.start":
                status = message["status"]
                if type(status) is int:
                    self.status = status
            elif kind == "websocket.accept":
                self.status = 101
            elif kind == "websocket.close":
                self.status = 403  # closed before accepting: the server answers 403
            return kind
        except Exception:
            return None

    # -- the name --------------------------------------------------------------------------------

    def route_label(self) -> str:
        """The request's one name, fixed the first time it is needed.

        Before its router ran, the resolver predicts the route (Starlette's does, exactly);
        a request it cannot name then is ``<unmatched>`` for good, so that a request never
        has two names in the metrics.
        """
        route = self.route
        if route is None:
            route = self.route = self._resolve(self.scope) or UNMATCHED
        return route

    def victim_label(self) -> str:
        """The name to show among a stall's victims, without fixing it if unknown yet."""
        route = self.route
        if route is None:
            route = self._resolve(self.scope)
            if route is None:
                return UNMATCHED
            self.route = route
        return route
