"""libuv's idle-time metric for uvloop, reached through ctypes, validated before use.

uvloop keeps its ``uv_loop_t*`` in a C field of the Loop object that Python cannot see. We
find it by looking, in the first words of the object, for a pointer to memory that is mapped
and whose first word (``uv_loop_t.data``) points back at the Loop, as uvloop sets it. Any
doubt (another platform, another layout, a symbol missing) and ``attach`` returns None: the
heartbeat alone is used and nothing else changes.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
from typing import Any

_UV_METRICS_IDLE_TIME = 1  # enum uv_loop_option


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


class IdleMeter:
    def __init__(self, lib: Any, uv_loop: int) -> None:
        self._idle = lib.uv_metrics_idle_time
        self._uv_loop = ctypes.c_void_p(uv_loop)

    @classmethod
    def attach(cls, loop: asyncio.AbstractEventLoop) -> IdleMeter | None:
        module = type(loop).__module__
        if not module.startswith("uvloop") or not sys.platform.startswith("linux"):
            return None
        try:
            lib = ctypes.CDLL(sys.modules["uvloop.loop"].__file__ or "")
            for name in ("uv_metrics_idle_time", "uv_loop_configure"):
                getattr(lib, name)
            lib.uv_metrics_idle_time.restype = ctypes.c_uint64
            lib.uv_metrics_idle_time.argtypes = [ctypes.c_void_p]
            lib.uv_loop_configure.restype = ctypes.c_int
            uv_loop = cls._find_uv_loop(loop)
            if uv_loop is None:
                return None
            if lib.uv_loop_configure(ctypes.c_void_p(uv_loop), ctypes.c_int(_UV_METRICS_IDLE_TIME)):
                return None
        except (OSError, AttributeError, KeyError, ValueError):
            return None
        return cls(lib, uv_loop)

    @staticmethod
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

    def seconds(self) -> float:
        """Total seconds the loop has spent waiting in its I/O poll (thread-safe in libuv)."""
        return int(self._idle(self._uv_loop)) / 1e9

    def detach(self) -> None:
        """libuv has no call to switch the metric off; it costs one clock read per poll."""
