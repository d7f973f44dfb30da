"""stallwatch: find what blocks the asyncio event loop, name the line, show what it cost."""

from __future__ import annotations

from .allow import allow_blocking
from .events import BACKGROUND, Cause, Frame, StackSample, StallEvent
from .exposition import metrics_app, start_metrics_server
from .middleware import StallwatchMiddleware
from .monitor import LoopMonitor, get_monitor
from .options import MiddlewareOptions, MonitorOptions

__all__ = [
    "BACKGROUND",
    "Cause",
    "Frame",
    "LoopMonitor",
    "MiddlewareOptions",
    "MonitorOptions",
    "StackSample",
    "StallEvent",
    "StallwatchMiddleware",
    "allow_blocking",
    "get_monitor",
    "metrics_app",
    "start_metrics_server",
]
