"""anyio's default thread limiter: ``anyio.to_thread.run_sync``, Starlette's
``run_in_threadpool``, FastAPI's plain ``def`` endpoints and dependencies.

Every call on asyncio goes through one class method, ``AsyncIOBackend.run_sync_in_worker_thread``:
it waits for a token of the limiter, hands the function to one of anyio's worker threads and
awaits the result. That method is the one hook point (the limiter and the worker threads are
anyio's, per loop, and stay so); stallwatch wraps it once per process, and the wrapper looks
up the watched loop it runs on. On a loop nobody watches, and for work given a limiter of its
own, it calls anyio's method with the arguments it got. On a watched loop it counts the
function as waiting, passes anyio a ``Job`` around it, and awaits anyio's own coroutine: the
same limiter, the same threads, the same cancellation.

The queue wait is measured from the call to the function's start in the worker thread: the
time waiting for a token and the hand-over to the thread.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any

from .readings import tokens
from .state import HookSite, Job

_lock = threading.Lock()
_hooks: dict[int, LimiterHook] = {}
_original: Any = None
"""anyio's ``run_sync_in_worker_thread`` (the classmethod object) while ours is in place."""
_backend: Any = None


class LimiterHook:
    """The anyio pool of one loop."""

    def __init__(self, site: HookSite) -> None:
        self.loop, self.pool, self.route_of, self.on_error = (
            site.loop,
            site.pool,
            site.route_of,
            site.on_error,
        )

    def install(self) -> bool:
        """False when anyio has not been imported: an app that never imports it has no
        anyio pool (the hook is not what should import it)."""
        if "anyio" not in sys.modules:
            return False
        try:
            from anyio._backends._asyncio import AsyncIOBackend
        except Exception:  # an anyio too different from the one this was written against
            return False
        global _original, _backend
        with _lock:
            current = AsyncIOBackend.__dict__.get("run_sync_in_worker_thread")
            if current is None:
                return False
            if _original is None:
                _original = current
                _backend = AsyncIOBackend
                AsyncIOBackend.run_sync_in_worker_thread = classmethod(_run_sync)  # type: ignore[method-assign,assignment]
            _hooks[id(self.loop)] = self
        return True

    def uninstall(self) -> None:
        global _original, _backend
        with _lock:
            if _hooks.get(id(self.loop)) is self:
                del _hooks[id(self.loop)]
            method = getattr(_backend, "__dict__", {}).get("run_sync_in_worker_thread")
            ours = getattr(method, "__func__", None)
            if not _hooks and _original is not None and ours is _run_sync:
                _backend.run_sync_in_worker_thread = _original
                _original = _backend = None
            # (someone who wrapped ours keeps it: ours then passes through, with no hooks)


def _submit(hook: LimiterHook, backend: Any, func: Callable[..., Any], limiter: Any) -> Job | None:
    default = backend.current_default_thread_limiter()
    if limiter is not None and limiter is not default:
        return None  # a limiter of the app's own: not the default pool
    return hook.pool.submit(func, hook.route_of(), tokens(default.total_tokens))


async def _run_sync(
    cls: Any, func: Callable[..., Any], args: Any, *rest: Any, **kwargs: Any
) -> Any:
    original = _original
    job: Job | None = None
    try:
        hook = _hooks.get(id(asyncio.get_running_loop()))
        if hook is not None and hook.loop is asyncio.get_running_loop():
            limiter = kwargs.get("limiter", rest[1] if len(rest) > 1 else None)
            try:
                job = _submit(hook, cls, func, limiter)
            except Exception:
                hook.on_error()
    except RuntimeError:  # no running loop: anyio's to say so
        pass
    if original is None:  # uninstalled while this call was on its way
        from anyio._backends._asyncio import AsyncIOBackend

        method = AsyncIOBackend.run_sync_in_worker_thread
        return await method(func, args, *rest, **kwargs)
    if job is None:
        return await original.__func__(cls, func, args, *rest, **kwargs)
    try:
        return await original.__func__(cls, job, args, *rest, **kwargs)
    finally:
        # Cancelled while it waited for a token: it never started and never will.
        job.settle()
