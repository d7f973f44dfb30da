"""Tasks a request starts belong to the request: its ``gather``, ``create_task``, task groups,
``BaseHTTPMiddleware``'s inner task, Starlette's streaming body, Quart's handler.

The middleware sets ``CURRENT`` to the request's span while the request's coroutine runs;
context variables are copied into every task created from there, transitively. The loop's
task factory sees every task created through ``loop.create_task`` (which ``asyncio.create_task``,
``gather``, ``TaskGroup`` and anyio use): when the context the task will run in carries a
span, the task's coroutine is wrapped in a ``Steps`` of that span, so each of its steps counts
as the request's. Tasks created outside any request pass through untouched, at the cost of
one context-variable read.

An application or server may set its own factory (``asyncio.eager_task_factory``, an
instrumentation library): ours calls it with the wrapped coroutine, and a factory set after
ours is found by the heartbeat and chained in turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from .spans import Steps

if TYPE_CHECKING:
    from .events import Frame
    from .spans import RequestSpan

CURRENT: ContextVar[RequestSpan | None] = ContextVar("stallwatch_request", default=None)
"""The request being served in this context, if any (set by the middleware)."""

TaskFactory = Callable[..., "asyncio.Future[Any]"]


def adopt_current_task(span: RequestSpan) -> None:
    """Make the running task ``span``'s, if it was taken for another request's task."""
    task = asyncio.current_task()
    steps = task.get_coro() if task is not None else None
    if isinstance(steps, Steps) and steps.span is not span:
        steps.span = span
        steps.started_by = None


class TaskAttribution:
    """Keeps this module's task factory on one loop, in front of any other (loop thread)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        started_by: Callable[[], Frame | None],
        on_error: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._started_by = started_by
        self._on_error = on_error
        self._previous: TaskFactory | None = None
        self._active = False
        self.factory: TaskFactory = self._create  # one bound method, so it can be compared

    def install(self) -> None:
        self._previous = self._loop.get_task_factory()
        self._loop.set_task_factory(self.factory)
        self._active = True

    def keep_installed(self) -> None:
        """Chain a factory that was set after ours (the heartbeat calls this)."""
        current = self._loop.get_task_factory()
        if self._active and current is not self.factory:
            self._previous = current
            self._loop.set_task_factory(self.factory)

    def uninstall(self) -> None:
        self._active = False  # if another factory chained ours, ours now only passes through
        if self._loop.get_task_factory() is self.factory:
            self._loop.set_task_factory(self._previous)

    def _create(
        self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> asyncio.Future[Any]:
        if self._active:
            try:
                context = kwargs.get("context")
                span = CURRENT.get() if context is None else context.get(CURRENT)
                if span is not None and (type(coro) is CoroutineType or asyncio.iscoroutine(coro)):
                    coro = Steps(span, coro, self._started_by())
            except Exception:
                self._on_error()
        previous = self._previous
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)
