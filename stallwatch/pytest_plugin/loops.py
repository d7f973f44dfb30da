"""Every asyncio loop that starts running gets a ``LoopMonitor``, on the loop's own thread.

asyncio's ``run_forever`` (3.10-3.14) announces a running loop by calling
``asyncio.events._set_running_loop`` on the loop's thread, looked up at call time; uvloop calls
the one it bound from the ``asyncio`` package at import. ``LoopWatcher`` wraps both while the
pytest plugin is on, so the test's loop, a ``TestClient`` portal's and anyio's runner's are all
watched without the event-loop policy system. Its monitors stop themselves when their loop
closes. Nothing here raises into a loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..events import StallEvent
from ..middleware import StallwatchMiddleware
from ..monitor import LoopMonitor, get_monitor
from ..profile import LoopProfile

logger = logging.getLogger("stallwatch")

SETTLE_TIMEOUT = 1.0
"""How long a test's report waits for the watchdogs to turn ended stalls into events."""


class LoopWatcher:
    """Starts a monitor on every asyncio loop that starts running, while installed."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._monitors: list[LoopMonitor] = []
        self._seen: dict[int, set[int]] = {}
        self._original: Callable[[asyncio.AbstractEventLoop | None], None] | None = None
        self._hooked: Callable[[asyncio.AbstractEventLoop | None], None] | None = None
        self.loops = 0
        self.errors = 0
        self.profile: LoopProfile | None = None
        """When set, every monitor started here files its loop profile in this one (the
        session's), so the profile outlives the loops."""

    def install(self) -> None:
        original = asyncio.events._set_running_loop
        watcher = self

        def set_running_loop(loop: asyncio.AbstractEventLoop | None) -> None:
            original(loop)
            if loop is not None:
                watcher.loop_started(loop)

        self._original, self._hooked = original, set_running_loop
        # base_events looks the hook up on asyncio.events at each run; uvloop binds the one
        # on the asyncio package when it is imported, so a uvloop imported later is covered.
        for module in (asyncio.events, asyncio):
            if vars(module).get("_set_running_loop") is original:
                vars(module)["_set_running_loop"] = set_running_loop

    def uninstall(self) -> None:
        for module in (asyncio.events, asyncio):
            if vars(module).get("_set_running_loop") is self._hooked:
                vars(module)["_set_running_loop"] = self._original
        self._original = None
        with self._lock:
            monitors, self._monitors = self._monitors, []
        for monitor in monitors:
            monitor.stop()

    def loop_started(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop's thread, inside ``run_forever``; must never raise into it."""
        try:
            if get_monitor(loop) is not None:
                return  # ours from an earlier run, or the app's own
            monitor = LoopMonitor(loop, **self.options)
            if self.profile is not None and monitor.profile is not None:
                monitor.profile = self.profile
            if monitor.start():
                with self._lock:
                    self._monitors.append(monitor)
                    self.loops += 1
        except Exception:
            self.errors += 1
            if self.errors == 1:
                logger.exception("stallwatch: could not watch loop %r (counted, not raised)", loop)

    def harvest(self, timeout: float = SETTLE_TIMEOUT) -> list[StallEvent]:
        """Stalls recorded since the last harvest, once the watchdogs have caught up."""
        deadline = time.monotonic() + timeout
        with self._lock:
            monitors = list(self._monitors)
        fresh: list[StallEvent] = []
        for monitor in monitors:
            settle(monitor, deadline)
            seen = self._seen.setdefault(id(monitor), set())
            for event in monitor.recent_stalls():
                if id(event) not in seen:  # harvested events stay referenced: ids stay unique
                    seen.add(id(event))
                    fresh.append(event)
            if not monitor.running:
                with self._lock:
                    self._monitors.remove(monitor)
                del self._seen[id(monitor)]
        fresh.sort(key=lambda e: e.started_at)
        return fresh


def settle(monitor: LoopMonitor, deadline: float) -> None:
    """Wait until the monitor's watchdog has recorded every stall that has ended."""
    monitor.settle(max(0.0, deadline - time.monotonic()))


class TestClientRoutes:
    """Names the culprit route of a stall inside a Starlette/FastAPI ``TestClient``.

    The monitor knows routes only through ``StallwatchMiddleware``. An app that does not
    mount it gets one (on the plugin's registry) between ``TestClient`` and the app, in the
    client's transport, so ``client.app`` stays the user's app. Starlette's transport is
    private: if it is not there as expected, nothing is patched and culprits stay
    ``<background>``.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._transport: Any = None
        self._original: Any = None

    def install(self) -> None:
        # Only a TestClient the tests have imported already (collection imported them):
        # importing it here would warn (httpx deprecation) and cost every other suite.
        testclient = sys.modules.get("starlette.testclient")
        transport = getattr(testclient, "_TestClientTransport", None)
        original = getattr(transport, "__init__", None)
        if transport is None or original is None:
            return
        wrap = self.wrap

        def init(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
            original(self, wrap(app), *args, **kwargs)

        self._transport, self._original = transport, original
        transport.__init__ = init

    def uninstall(self) -> None:
        if self._transport is not None:
            self._transport.__init__ = self._original
            self._transport = None

    def wrap(self, app: Any) -> Any:
        try:
            if isinstance(app, StallwatchMiddleware) or any(
                getattr(m, "cls", None) is StallwatchMiddleware
                for m in getattr(app, "user_middleware", ())
            ):
                return app  # the app names its routes already
            return StallwatchMiddleware(app, **self._options)
        except Exception:
            logger.exception("stallwatch: could not name TestClient routes (not raised)")
            return app
