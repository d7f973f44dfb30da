"""libuv, reached through ctypes under uvloop: its idle-time metric, a prepare handle (the
loop is about to poll) and a check handle (the poll has returned).

uvloop keeps its ``uv_loop_t*`` in a C field of the Loop object that Python cannot see. We
find it by looking, in the first words of the object, for a pointer to memory that is mapped
and whose first word (``uv_loop_t.data``) points back at the Loop, as uvloop sets it. Any
doubt (another platform, another layout, a symbol missing) and ``LibUV.attach`` returns None:
the heartbeat alone is used and nothing else changes.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
from collections.abc import Callable
from typing import Any

_UV_METRICS_IDLE_TIME = 1  # enum uv_loop_option
_UV_CHECK = 2  # enum uv_handle_type
_UV_PREPARE = 9
_PrepareCallback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

_retired: list[Any] = []
"""Closed handles' memory: libuv finishes a close on a later iteration, so it is never freed."""


def _mapped(address: int) -> bool:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                span, perms = line.split()[:2]
                low, high = (int(x, 16) for x in span.split("-"))
                if low <= address < high - 8:
                    return perms.startswith("rw")
    except (OSError, ValueError):
        return False
    return False


def _find_uv_loop(loop: object) -> int | None:
    base = id(loop)
    size = min(type(loop).__basicsize__, 256)
    word = ctypes.sizeof(ctypes.c_void_p)
    for offset in range(2 * word, size, word):
        candidate = ctypes.c_void_p.from_address(base + offset).value
        if not candidate or candidate % 8 or not _mapped(candidate):
            continue
        if ctypes.c_void_p.from_address(candidate).value == base:
            return candidate
    return None


class LibUV:
    """The few libuv calls stallwatch makes, bound to one uvloop loop."""

    def __init__(self, lib: Any, uv_loop: int) -> None:
        self._lib = lib
        self.uv_loop = ctypes.c_void_p(uv_loop)
        self._idle = lib.uv_metrics_idle_time

    @classmethod
    def attach(cls, loop: asyncio.AbstractEventLoop) -> LibUV | None:
        """Switch libuv's idle-time metric on for ``loop`` (call on the loop's thread)."""
        if not type(loop).__module__.startswith("uvloop") or not sys.platform.startswith("linux"):
            return None
        try:
            lib = ctypes.CDLL(sys.modules["uvloop.loop"].__file__ or "")
            lib.uv_metrics_idle_time.restype = ctypes.c_uint64
            lib.uv_metrics_idle_time.argtypes = [ctypes.c_void_p]
            lib.uv_loop_configure.restype = ctypes.c_int
            lib.uv_handle_size.restype = ctypes.c_size_t
            lib.uv_handle_size.argtypes = [ctypes.c_int]
            for kind in ("prepare", "check"):
                for name in (f"uv_{kind}_init", f"uv_{kind}_start"):
                    getattr(lib, name).restype = ctypes.c_int
                getattr(lib, f"uv_{kind}_init").argtypes = [ctypes.c_void_p, ctypes.c_void_p]
                getattr(lib, f"uv_{kind}_start").argtypes = [ctypes.c_void_p, _PrepareCallback]
                getattr(lib, f"uv_{kind}_stop").argtypes = [ctypes.c_void_p]
            lib.uv_unref.argtypes = [ctypes.c_void_p]
            lib.uv_close.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            uv_loop = _find_uv_loop(loop)
            if uv_loop is None:
                return None
            if lib.uv_loop_configure(ctypes.c_void_p(uv_loop), ctypes.c_int(_UV_METRICS_IDLE_TIME)):
                return None
        except (OSError, AttributeError, KeyError, ValueError):
            return None
        return cls(lib, uv_loop)

    def idle_seconds(self) -> float:
        """Total seconds the loop has waited in its I/O poll; libuv makes this thread-safe."""
        return int(self._idle(self.uv_loop)) / 1e9

    def prepare(self, callback: Callable[[], None]) -> PrepareHandle | None:
        """Run ``callback`` each time the loop is about to poll (loop thread only)."""
        return self._handle("prepare", callback)

    def check(self, callback: Callable[[], None]) -> PrepareHandle | None:
        """Run ``callback`` each time the loop's poll has returned (loop thread only)."""
        return self._handle("check", callback)

    def _handle(self, kind: str, callback: Callable[[], None]) -> PrepareHandle | None:
        handle = PrepareHandle(self._lib, callback, kind)
        if not handle.start(self.uv_loop):
            return None
        return handle


class PrepareHandle:
    """A libuv prepare or check handle running a Python callback (same C signature)."""

    def __init__(self, lib: Any, callback: Callable[[], None], kind: str = "prepare") -> None:
        self._lib = lib
        self._kind = kind
        size = lib.uv_handle_size(_UV_CHECK if kind == "check" else _UV_PREPARE)
        self._memory = ctypes.create_string_buffer(max(int(size), 64))

        def run(_handle: int | None) -> None:
            callback()

        self._callback = _PrepareCallback(run)
        self._open = False

    def start(self, uv_loop: ctypes.c_void_p) -> bool:
        lib = self._lib
        if getattr(lib, f"uv_{self._kind}_init")(uv_loop, self._memory):
            return False
        self._open = True
        if getattr(lib, f"uv_{self._kind}_start")(self._memory, self._callback):
            self.close()
            return False
        lib.uv_unref(self._memory)  # never keeps the loop alive on its own
        return True

    def close(self) -> None:
        """Stop and close (loop thread only); libuv completes the close on its next turn."""
        if self._open:
            self._open = False
            getattr(self._lib, f"uv_{self._kind}_stop")(self._memory)
            self._lib.uv_close(self._memory, None)
            _retired.append((self._memory, self._callback))
