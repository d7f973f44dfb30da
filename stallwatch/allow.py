"""``allow_blocking()``: say that a stall is expected (start-up work, a deliberate migration).

Stalls inside it are measured and counted like any other, but their events say
``allowed=True``: the report shows them apart and the pytest plugin never fails on them. A
stall is allowed when code inside ``allow_blocking()`` held at least half of it.

Use it around synchronous code (``with allow_blocking(): conn.execute(...)``) or as a
decorator of a function or coroutine function; for a coroutine only its own steps are
allowed, not what other tasks do while it awaits. Outside a watched loop it does nothing.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar

from .monitor import get_monitor

F = TypeVar("F", bound=Callable[..., Any])


def _timeline() -> Any:
    monitor = get_monitor()
    return monitor.timeline if monitor is not None and monitor.running else None


class allow_blocking:
    """Context manager and decorator: the stalls inside are expected."""

    __slots__ = ("_timelines",)

    def __init__(self) -> None:
        self._timelines: list[Any] = []

    def __enter__(self) -> allow_blocking:
        timeline = _timeline()
        self._timelines.append(timeline)
        if timeline is not None:
            timeline.allowance.began(perf_counter())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        timeline = self._timelines.pop()
        if timeline is not None:
            timeline.allowance.ended(perf_counter(), timeline.current_start())

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def allowed_coroutine(*args: Any, **kwargs: Any) -> Any:
                return await _AllowedSteps(func(*args, **kwargs))

            return allowed_coroutine  # type: ignore[return-value]

        @functools.wraps(func)
        def allowed(*args: Any, **kwargs: Any) -> Any:
            with allow_blocking():
                return func(*args, **kwargs)

        return allowed  # type: ignore[return-value]


class _AllowedSteps:
    """Each step of the coroutine runs inside ``allow_blocking()``; its awaits do not."""

    __slots__ = ("_coro",)

    def __init__(self, coro: Any) -> None:
        self._coro = coro

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def __iter__(self) -> _AllowedSteps:
        return self

    def send(self, value: Any = None) -> Any:
        with allow_blocking():
            return self._coro.send(value)

    __next__ = send

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        with allow_blocking():
            if val is None and tb is None:
                return self._coro.throw(typ)
            return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._coro.close()
