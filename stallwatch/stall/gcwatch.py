"""Garbage-collection pauses, so that a GC pause is not mistaken for blocking code."""

from __future__ import annotations

import gc
import threading
from collections import deque
from time import perf_counter
from typing import Any


class GCWatch:
    """Keeps the last collections' start and end; one ``gc.callbacks`` hook per process."""

    def __init__(self, keep: int = 512) -> None:
        self._spans: deque[tuple[float, float]] = deque(maxlen=keep)
        self._started = 0.0
        self._users = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                gc.callbacks.append(self._callback)

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._callback in gc.callbacks:
                gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = perf_counter()
        else:
            self._spans.append((self._started, perf_counter()))

    def overlap(self, start: float, end: float) -> float:
        total = 0.0
        for began, ended in list(self._spans):
            if ended > start and began < end:
                total += min(ended, end) - max(began, start)
        return total


GC_WATCH = GCWatch()
