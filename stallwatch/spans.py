"""One request's time on the event loop: its steps, its status, what froze it.

A ``RequestSpan`` stands between the task and the application's coroutine: the task resumes
the span, the span resumes the application and times how long that step held the loop. It is
both the awaitable and the ``send`` wrapper so a request costs one object, not a closure per
hook. It runs on the loop thread only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from time import perf_counter
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from ._types import Message, Scope, Send
from .routes import UNMATCHED, UNROUTED, RouteResolver

if TYPE_CHECKING:
    from .timeline import Timeline


class RequestSpan:
    __slots__ = (
        "_coro",
        "_resolve",
        "_send",
        "base_seq",
        "busy",
        "counted",
        "longest",
        "own_long",
        "route",
        "scope",
        "start",
        "status",
        "stretch_id",
        "stretch_time",
        "timeline",
    )

    def __init__(
        self,
        timeline: Timeline,
        scope: Scope,
        send: Send,
        resolve: RouteResolver,
        now: float,
    ) -> None:
        self.timeline = timeline
        self.scope = scope
        self._send = send
        self._resolve = resolve
        # The request's life starts when the loop read it. Under asyncio its first step runs
        # in the stretch after the one in which the server read it and created its task;
        # under uvloop, in the same one. Where polls are not timed: its first step.
        if not timeline.exact:
            self.start = now
            self.base_seq = timeline.seq
        elif timeline.origin_previous:
            self.start = timeline.prev_stretch_start
            self.base_seq = timeline.prev_seq
        else:
            self.start = timeline.current_start()
            self.base_seq = timeline.seq
        self.busy = 0.0
        self.longest = 0.0
        self.own_long = 0.0
        self.stretch_id = -1
        self.stretch_time = 0.0
        self.counted = 0.0
        self.route: str | None = None
        self.status = 0
        self._coro: Any = None

    # -- the awaitable: each send/throw is one step of the application ---------------------

    def wrap(self, awaitable: Any) -> RequestSpan:
        self._coro = awaitable if type(awaitable) is CoroutineType else awaitable.__await__()
        return self

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def __iter__(self) -> RequestSpan:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        began = perf_counter()
        try:
            return self._coro.send(value)
        finally:
            # _account, inlined: this runs on every step of every request.
            seconds = perf_counter() - began
            self.busy += seconds
            if seconds > self.longest:
                self.longest = seconds
            timeline = self.timeline
            if self.stretch_id == timeline.stretch_id:
                self.stretch_time += seconds
                if self.counted:
                    timeline.ran.append(self)
            else:
                self.stretch_id = timeline.stretch_id
                self.stretch_time = seconds
                self.counted = 0.0
                timeline.ran.append(self)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        began = perf_counter()
        try:
            if val is None and tb is None:
                return self._coro.throw(typ)
            return self._coro.throw(typ, val, tb)  # pragma: no cover - pre-3.12 callers
        finally:
            self._account(perf_counter() - began)

    def close(self) -> None:
        self._coro.close()

    def _account(self, seconds: float) -> None:
        self.busy += seconds
        if seconds > self.longest:
            self.longest = seconds
        timeline = self.timeline
        if self.stretch_id == timeline.stretch_id:
            self.stretch_time += seconds
            if self.counted:
                timeline.ran.append(self)  # folded already: fold the new part too
        else:
            self.stretch_id = timeline.stretch_id
            self.stretch_time = seconds
            self.counted = 0.0
            timeline.ran.append(self)

    # -- the send wrapper: the status, nothing else ------------------------------------------

    def asgi_send(self, message: Message) -> Awaitable[None]:
        # A plain function returning the server's own awaitable: no coroutine of ours per send.
        if not self.status:
            kind = message["type"]
            if kind == "http.response.start" or kind == "websocket.http.response.start":
                self.status = message["status"]
            elif kind == "websocket.accept":
                self.status = 101
            elif kind == "websocket.close":
                self.status = 403  # closed before accepting: the server answers 403
        return self._send(message)

    # -- labels --------------------------------------------------------------------------------

    def route_label(self) -> str:
        route = self.route
        if route is None:
            route = self._resolve(self.scope)
            if route is None:
                return UNROUTED
            self.route = route
        return route

    def final_route(self) -> str:
        route = self.route_label()
        if route is UNROUTED:
            self.route = route = UNMATCHED
        return route
