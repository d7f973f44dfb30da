"""How stallwatch keeps its own errors out of the app: counted, logged once, never raised.

Every part that can fail on the app's path (the middleware, the heartbeat, the probes, the
watchdog thread, the report) reports here with the name of its component; the count is
``stallwatch_internal_errors_total{component}``, and the first error of each component is
logged with its traceback (later ones only when the caller asks, so that a failure that
repeats on every tick cannot flood the log). Call ``error()`` from inside an ``except``
block, or wrap a block in ``contained()``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter

logger = logging.getLogger("stallwatch")


class InternalErrors:
    """The error count of one monitor (or of a middleware before its monitor started)."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[str, Any] = {}
        self._logged: set[str] = set()

    def error(self, component: str, *, once: bool = True) -> None:
        """Count the exception being handled for ``component``; never raises."""
        try:
            child = self._children.get(component)
            if child is None:
                child = self._children[component] = self._counter.labels(component)
            child.inc()
            if component not in self._logged or not once:
                self._logged.add(component)
                logger.exception(
                    "stallwatch: internal error in %s (counted, not raised)", component
                )
        except Exception:  # pragma: no cover - the last line of defence
            pass

    @contextmanager
    def contained(self, component: str) -> Iterator[None]:
        """Run the block; an ``Exception`` inside it is counted, logged and swallowed."""
        try:
            yield
        except Exception:
            self.error(component)
