"""Which loops are watched: one watcher (a ``LoopMonitor``) per event loop, found from anywhere
in the process. It knows watchers only as things with a loop that can be stopped, so that
the monitor's own module, which imports most of the package, is imported by nothing here."""

from __future__ import annotations

import asyncio
import atexit
import threading
from typing import Protocol


class Watcher(Protocol):
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def stop(self) -> None: ...


_monitors: dict[int, Watcher] = {}
_lock = threading.Lock()
_atexit_registered = False


def get_watcher(loop: asyncio.AbstractEventLoop | None = None) -> Watcher | None:
    """The running watcher of ``loop`` (the running loop by default), or None."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
    monitor = _monitors.get(id(loop))
    return monitor if monitor is not None and monitor.loop is loop else None


def claim(loop: asyncio.AbstractEventLoop, monitor: Watcher) -> bool:
    """Make ``monitor`` the one of ``loop``; False if another one watches it already."""
    global _atexit_registered
    with _lock:
        if get_watcher(loop) is not None:
            return False
        _monitors[id(loop)] = monitor
        if not _atexit_registered:
            _atexit_registered = True
            atexit.register(_stop_all)
    return True


def release(loop: asyncio.AbstractEventLoop | None, monitor: Watcher) -> None:
    with _lock:
        if _monitors.get(id(loop)) is monitor:
            del _monitors[id(loop)]


def _stop_all() -> None:
    for monitor in list(_monitors.values()):
        monitor.stop()
