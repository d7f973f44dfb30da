"""Tasks a request starts belong to the request: its ``gather``, ``create_task``, task groups,
``BaseHTTPMiddleware``'s inner task, Starlette's streaming body, Quart's handler.

The middleware sets ``CURRENT`` to the request's span while the request's coroutine runs;
context variables are copied into every task created from there, transitively. A task runs
one *step* at a time, and every step of every task, on asyncio and uvloop alike, reaches the
loop through ``loop.call_soon(step, context=the task's context)``: the first step when the
task is created, each later one when the future it awaited is done. So stallwatch puts
itself in front of the loop's ``call_soon`` (an attribute of that one loop object, never of
its class) and, when the callback is a task's step and the task's context carries a request,
schedules a timed run of that step instead. The task, its coroutine, its context and its
callbacks stay exactly what asyncio made them: ``Task.get_coro()`` is the app's coroutine,
which ``inspect``, anyio, debuggers and ``python -m asyncio ps`` read as they would without
stallwatch (docs/how-it-works.md weighs this against wrapping the coroutine, which anyio's
cancellation could tell apart).

``call_soon`` is stallwatch's only while a task a request started is alive: the task factory
(the loop's, which every ``create_task`` goes through) puts it in front of the loop's before
it creates such a task, so the task's first step is seen too, and the heartbeat takes it off
once they have all finished. A route that starts no task (most do not) never pays for it.
The factory also does two things at creation: the line of app code that started the task
(``STARTED_BY``, for the stall report), and a task created after its request ended by
something that inherited the request's context (a resumed socket reader) is not the
request's. It chains any factory the app or server set; a factory set after ours is found by
the heartbeat and chained in turn. A task made without the factory (``asyncio.Task(coro)``,
which asyncio discourages) is timed only while another task of a request is alive.

Everything here runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections.abc import Callable
from contextvars import Context, ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..events import Frame
    from ..loop.timeline import Timeline
    from .spans import RequestSpan

CURRENT: ContextVar[RequestSpan | None] = ContextVar("stallwatch_request", default=None)
"""The request being served in this context, if any (set by the middleware)."""

STARTED_BY: ContextVar[Frame | None] = ContextVar("stallwatch_started_by", default=None)
"""In a task's context: the line of the request's code that created the task."""

TaskFactory = Callable[..., "asyncio.Future[Any]"]

if sys.version_info >= (3, 12):
    current_task = asyncio.current_task  # in C: as cheap as it gets
else:  # pragma: no cover - 3.10 and 3.11: asyncio's own Python function looks the loop up again
    _current_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = getattr(
        asyncio.tasks, "_current_tasks", {}
    )

    def current_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
        """The task running on ``loop`` (asyncio's registry of them, read directly)."""
        return _current_tasks.get(loop)


_Task = asyncio.Task
_PyTask: type = getattr(asyncio.tasks, "_PyTask", asyncio.Task)


class TaskAttribution:
    """Keeps this module's ``call_soon`` and task factory on one loop (loop thread)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeline: Timeline,
        started_by: Callable[[], Frame | None],
        on_error: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._timeline = timeline
        self._started_by = started_by
        self._on_error = on_error
        self._previous: TaskFactory | None = None
        self._call_soon: Callable[..., asyncio.Handle] = loop.call_soon
        self._had_own_call_soon = False
        self._active = False
        self.hooked = False
        """True while ``call_soon`` is ours (a task a request started may be alive)."""
        self._held = False  # someone set their own call_soon in front of ours: ours stays
        self._alive: list[Callable[[], asyncio.Future[Any] | None]] = []
        """The request tasks that keep ``call_soon`` ours, until the heartbeat sees them done."""
        self.origin: Frame | None = None
        """Where the request's code started the task whose step runs now, if it did (the
        watchdog reads it, from its thread, for a stall's ``started_by``)."""
        self.factory: TaskFactory = self._create  # one bound method, so it can be compared
        self.call_soon: Callable[..., asyncio.Handle] = self._schedule

    def install(self) -> None:
        loop = self._loop
        self._previous = loop.get_task_factory()
        loop.set_task_factory(self.factory)
        self._active = True

    def keep_installed(self) -> None:
        """Chain a factory that was set after ours, and give the loop its ``call_soon`` back
        once no task a request started is alive (the heartbeat calls this)."""
        current = self._loop.get_task_factory()
        if self._active and current is not self.factory:
            self._previous = current
            self._loop.set_task_factory(self.factory)
        if self.hooked:
            self._alive = alive = [ref for ref in self._alive if _running(ref)]
            if not alive:
                self._unhook()

    def uninstall(self) -> None:
        self._active = False  # if another factory or call_soon chained ours, ours passes through
        loop = self._loop
        if loop.get_task_factory() is self.factory:
            loop.set_task_factory(self._previous)
        self._alive = []
        self._unhook(stopping=True)

    def _hook(self) -> None:
        """Put ``call_soon`` in front of the loop's: a task of a request is about to exist."""
        loop = self._loop
        own = getattr(loop, "__dict__", {})
        self._had_own_call_soon = "call_soon" in own  # someone else's, to restore
        self._call_soon = loop.call_soon
        loop.call_soon = self.call_soon  # type: ignore[method-assign,assignment]
        self.hooked = True

    def _unhook(self, *, stopping: bool = False) -> None:
        """Give the loop its ``call_soon`` back, unless another tool's stands over ours."""
        if not self.hooked or (self._held and not stopping):
            return
        loop = self._loop
        own = getattr(loop, "__dict__", {})
        current = own.get("call_soon")
        if current is not self.call_soon and current is not None:
            # Another tool put its own in front of ours and calls ours: taking ours out from
            # under it (and putting it back later, in front of theirs) would chain ours twice.
            self._held = True
            return
        self.hooked = False
        if current is None:
            return  # someone took ours off already: the next request's task puts it back
        if self._had_own_call_soon:
            loop.call_soon = self._call_soon  # type: ignore[method-assign,assignment]
        else:
            del loop.call_soon

    # -- every callback the loop is handed ---------------------------------------------------

    def _schedule(
        self, callback: Callable[..., object], *args: Any, context: Context | None = None
    ) -> asyncio.Handle:
        # The hot path: one context read for every callback, a little more for a request's.
        if context is not None and self._active:
            span = context.get(CURRENT)
            if span is not None:
                owner = getattr(callback, "__self__", None)
                # A step of a task the request started (not the request's own task, whose
                # app coroutine the span times itself).
                if owner is not span.host and isinstance(owner, (_Task, _PyTask)):
                    return self._call_soon(self._run, callback, *args, context=context)
        return self._call_soon(callback, *args, context=context)

    def _run(self, step: Callable[..., object], *args: Any) -> None:
        """One timed step of a request's task, run in the task's context by the loop."""
        outer = self.origin
        self.origin = STARTED_BY.get()
        try:
            self._timeline.run_step(None, step, *args)
        finally:
            self.origin = outer

    # -- every task the loop creates ---------------------------------------------------------

    def _create(
        self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any
    ) -> asyncio.Future[Any]:
        # Every task the loop creates passes here: outside a request (the server's own task
        # for each request among them) nothing is done but create it.
        if self._active:
            context = kwargs.get("context")
            if context is None:
                span = CURRENT.get()
                if span is not None:
                    return self._create_in_request(loop, coro, span, kwargs)
            elif context.get(CURRENT) is not None:  # handed a context of a request's
                self._ensure_hooked()
                return self._keep(self._create_plain(loop, coro, kwargs))
        return self._create_plain(loop, coro, kwargs)

    def _create_plain(
        self, loop: asyncio.AbstractEventLoop, coro: Any, kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        """The task as the loop would make it: the chained factory's, or asyncio's own."""
        previous = self._previous
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)  # looked up now, as asyncio does

    def _create_in_request(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Any,
        span: RequestSpan,
        kwargs: dict[str, Any],
    ) -> asyncio.Future[Any]:
        token = origin = None
        try:
            if span.done:  # the request has ended: whatever started this, not it
                token = CURRENT.set(None)
            else:
                origin = STARTED_BY.set(self._started_by())
        except Exception:
            self._on_error()
        if token is None:
            self._ensure_hooked()
        try:
            task = self._create_plain(loop, coro, kwargs)
            if token is None:
                self._keep(task)
            return task
        finally:
            # The task copied the context as it is now; ours goes back as it was.
            if token is not None:
                CURRENT.reset(token)
            if origin is not None:
                STARTED_BY.reset(origin)

    def _ensure_hooked(self) -> None:
        """Before a request's task exists: its first step is scheduled as it is made."""
        if not self.hooked:
            try:
                self._hook()
            except Exception:
                self._on_error()

    def _keep(self, task: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """``call_soon`` stays ours while ``task``, a request's, is alive."""
        try:
            self._alive.append(weakref.ref(task))
        except TypeError:  # a factory's future that takes no weak reference: held until done
            self._alive.append(lambda: task)
        return task


def _running(ref: Callable[[], asyncio.Future[Any] | None]) -> bool:
    task = ref()
    return task is not None and not task.done()
