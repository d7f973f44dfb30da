"""The loop's default executor: ``loop.run_in_executor(None, ...)`` and ``asyncio.to_thread``.

Both reach the executor through ``loop.run_in_executor``, looked up on the loop object each
time (asyncio's own ``getaddrinfo`` included). stallwatch puts a function of its own in front
of it as an attribute of that one loop object, never of its class, as ``request/tasks.py``
does with ``call_soon``. It hands the loop's own ``run_in_executor`` the same executor
argument and a ``Job`` around the same function, so the executor the loop (or the app,
through ``set_default_executor``) chose runs the work, in its threads, with the same
arguments; what comes back is the loop's own future.

Work for another executor, and coroutine functions in debug mode (so that asyncio still
raises its ``TypeError``), pass through untouched.

The default executor's size: asyncio keeps the executor in ``loop._default_executor``; uvloop
keeps it where Python cannot see, so there the size is that of an executor the app handed
``set_default_executor`` while watched, else the size uvloop's own default executor has.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

from .readings import capacity_of, default_executor_size
from .state import HookSite, Job


class ExecutorHook:
    """Keeps the ``run_in_executor`` of one loop observed (install and uninstall on the loop
    thread; the hook itself runs wherever the loop's method would)."""

    def __init__(self, site: HookSite) -> None:
        loop = self._loop = site.loop
        self._pool = site.pool
        self._route_of = site.route_of
        self._on_error = site.on_error
        self._original: Callable[..., asyncio.Future[Any]] = loop.run_in_executor
        self._original_set: Callable[[Any], None] = loop.set_default_executor
        self._had_own: dict[str, bool] = {}
        self._seen: concurrent.futures.Executor | None = None
        self._active = False
        # Bound once, so uninstall can tell ours from a method someone set after us.
        self.run_in_executor: Callable[..., asyncio.Future[Any]] = self._run_in_executor
        self.set_default_executor: Callable[[Any], None] = self._set_default_executor

    def install(self) -> bool:
        """False when the loop takes no attributes (a loop class with ``__slots__``)."""
        loop = self._loop
        own = getattr(loop, "__dict__", None)
        if own is None:
            return False
        self._had_own = {
            "run_in_executor": "run_in_executor" in own,
            "set_default_executor": "set_default_executor" in own,
        }
        self._original = loop.run_in_executor
        self._original_set = loop.set_default_executor
        loop.run_in_executor = self.run_in_executor  # type: ignore[method-assign,assignment]
        loop.set_default_executor = self.set_default_executor  # type: ignore[method-assign,assignment]
        self._active = True
        return True

    def uninstall(self) -> None:
        self._active = False  # if someone wrapped ours meanwhile, ours passes through
        loop = self._loop
        own = getattr(loop, "__dict__", None)
        if own is None:
            return
        for name, ours, original in (
            ("run_in_executor", self.run_in_executor, self._original),
            ("set_default_executor", self.set_default_executor, self._original_set),
        ):
            if own.get(name) is ours:
                if self._had_own.get(name):
                    setattr(loop, name, original)
                else:
                    delattr(loop, name)

    # -- the hooks -------------------------------------------------------------------------------

    def _set_default_executor(self, executor: Any) -> None:
        self._original_set(executor)  # the loop's checks and errors, unchanged
        self._seen = executor

    def _run_in_executor(
        self, executor: Any, func: Callable[..., Any], *args: Any
    ) -> asyncio.Future[Any]:
        job: Job | None = None
        if self._active:
            try:
                if self._observes(executor, func):
                    job = self._pool.submit(func, self._route_of(), self._capacity())
            except Exception:
                self._on_error()
        if job is None:
            return self._original(executor, func, *args)
        try:
            future = self._original(executor, job, *args)
        except BaseException:
            job.settle()  # refused (a closed loop, a shut-down executor): it never waits
            raise
        try:
            # Cancelled before a thread took it: the executor drops it, so must we.
            future.add_done_callback(job.settle)
        except Exception:
            self._on_error()
        return future

    def _observes(self, executor: Any, func: Any) -> bool:
        if executor is not None and executor is not self._default():
            return False  # the app's own executor: not the default pool
        # In debug mode the loop's own check must see a coroutine function itself.
        debug_check = self._loop.get_debug() and (
            asyncio.iscoroutine(func) or asyncio.iscoroutinefunction(func)
        )
        return not debug_check

    def _default(self) -> Any:
        return getattr(self._loop, "_default_executor", self._seen)

    def _capacity(self) -> int | None:
        executor = self._default()
        if executor is None:
            # Not created yet (the loop builds one on first use), or uvloop's own.
            return default_executor_size()
        return capacity_of(executor)
