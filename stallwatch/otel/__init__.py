"""OpenTelemetry for stallwatch (``opentelemetry=True``): stalls on traces, metrics through the
Metrics API, the request's trace on the Prometheus metrics as exemplars.

stallwatch imports and works without OpenTelemetry: nothing here imports ``opentelemetry``
until the option is on. The parts, each behind one face:

- ``stalls.py`` (``LoopTelemetry``, one per monitor): every stall becomes a span named
  ``event loop stall``, back-dated to the stretch, child of the culprit request's server span;
  the loop's metrics through the Metrics API.
- ``requests.py`` (``RequestTelemetry``, one per middleware): the server span of each request
  is kept on its record at the request's start (the watchdog thread cannot read context
  variables); before the span ends, its loop hold, frozen time, culprit and links to the
  stalls that froze it are set on it; the request's metrics through the Metrics API.
- ``meters.py``: the instruments, one per Prometheus metric, dotted names, seconds.
- ``traces.py``: what both share: span contexts, exemplars, clocks.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..metrics import Metrics
    from .requests import RequestTelemetry
    from .stalls import LoopTelemetry

INSTALL = "pip install 'stallwatch[otel]'"


def available() -> bool:
    """Whether the OpenTelemetry API can be imported here."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):  # a parent that is not a package, a broken install
        return False


def require(option: str) -> None:
    """Raise ``ImportError`` naming ``option`` when the OpenTelemetry API is not installed,
    so that the option fails where it is written, at start-up, not in a request."""
    if not available():
        raise ImportError(f"{option}=True needs the OpenTelemetry API: {INSTALL}")


def loop_telemetry(metrics: Metrics, *, floor: float, stacks: bool) -> LoopTelemetry:
    """The monitor's part: stall spans and the loop's metrics (imports OpenTelemetry)."""
    from .stalls import LoopTelemetry

    return LoopTelemetry(metrics, floor=floor, stacks=stacks)


def request_telemetry(metrics: Metrics, *, group_status: bool) -> RequestTelemetry:
    """The middleware's part: server-span attributes, links, the request's metrics."""
    from .requests import RequestTelemetry

    return RequestTelemetry(metrics, group_status=group_status)


__all__ = ["INSTALL", "available", "loop_telemetry", "request_telemetry", "require"]
