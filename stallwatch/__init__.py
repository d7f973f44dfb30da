"""stallwatch: find what blocks the asyncio event loop, name the line, show what it cost."""

from __future__ import annotations

from .events import BACKGROUND, Cause, Frame, StackSample, StallEvent
from .exposition import metrics_app, start_metrics_server
from .middleware import StallwatchMiddleware
from .monitor import LoopMonitor, get_monitor

__all__ = [
    "BACKGROUND",
    "Cause",
    "Frame",
    "LoopMonitor",
    "StackSample",
    "StallEvent",
    "StallwatchMiddleware",
    "get_monitor",
    "metrics_app",
    "start_metrics_server",
]
