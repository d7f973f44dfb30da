"""``GET /livez``: whether the event loop is alive, answered off the loop.

A probe the app serves itself cannot answer while its loop is held, and so cannot tell
"busy, slow" from "wedged for good": both time out. The off-loop metrics server
(``metrics_port``) answers from a thread of its own, from what the monitor knows there: when
the loop last polled. The loop is alive while it has polled within ``liveness_timeout``,
however late its callbacks run (a loop that turns but lags is busy, and restarting the pod
would only drop the work it is doing); it is not alive when it has not polled for that long,
and not when it is not running at all (stopped, closed, or not started yet).

``verdict`` is the decision, a pure function of one reading; ``Liveness.respond`` the
answer, a plain function of the request, in the shape of the report's (``report/answers.py``),
whose access rules decide who may also read the culprit route and line in progress.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Literal, Protocol

from ._types import PlainRequest, Response
from .events import Frame
from .stall.location import frame_text

PATH = "/livez"

Status = Literal["alive", "held", "stopped"]


@dataclass(frozen=True, slots=True)
class LoopReading:
    """The loop as the off-loop server sees it at one moment."""

    running: bool
    """A monitor watches the loop and the loop is running."""
    held_for: float
    """Seconds since the loop last polled (0 while it polls)."""
    lag: float
    """How late a callback that became due now would run: the heartbeat's recent lag."""
    culprit: str | None = None
    """The route holding the loop right now, when a stall is in progress and known."""
    line: str | None = None
    """The application's line holding it (``file:line in function``), when sampled."""


def verdict(reading: LoopReading, timeout: float) -> tuple[bool, Status]:
    """(alive, status): alive while the loop has polled within ``timeout`` seconds."""
    if not reading.running:
        return False, "stopped"
    if reading.held_for >= timeout:
        return False, "held"
    return True, "alive"


def body(reading: LoopReading, timeout: float, *, detail: bool) -> dict[str, Any]:
    """The JSON answer. Routes and lines are the report's kind of detail: only for clients
    the report would answer (``detail``)."""
    _, status = verdict(reading, timeout)
    data: dict[str, Any] = {"status": status, "timeout": timeout}
    if reading.running:
        data["held_for"] = round(reading.held_for, 4)
        data["lag"] = round(reading.lag, 4)
    if detail and (reading.culprit is not None or reading.line is not None):
        data["culprit"] = reading.culprit
        data["line"] = reading.line
    return data


_HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
]


class _Sampler(Protocol):
    @property
    def thread_id(self) -> int: ...

    def sample(self) -> tuple[tuple[str, int, str], ...] | None: ...

    def top_frame(self, frames: Any) -> Frame | None: ...


class Watched(Protocol):
    """What ``read_monitor`` needs of a ``LoopMonitor``."""

    @property
    def running(self) -> bool: ...

    @property
    def loop(self) -> Any: ...

    @property
    def stall_threshold(self) -> float: ...

    @property
    def sampler(self) -> _Sampler | None: ...

    @property
    def timeline(self) -> Any: ...

    def held_since(self) -> float | None: ...

    def recent_lag(self) -> float: ...


def read_monitor(monitor: Watched | None, now: float, *, detail: bool) -> LoopReading:
    """The reading of a monitor, from the off-loop server's thread. With ``detail``, while a
    stall is in progress, who holds the loop: the route of the request whose step runs and
    the application's line, from the loop thread's stack as it is now."""
    if monitor is None or not monitor.running or not monitor.loop.is_running():
        return LoopReading(running=False, held_for=0.0, lag=0.0)
    since = monitor.held_since()
    held_for = 0.0 if since is None else max(0.0, now - since)
    culprit = line = None
    sampler = monitor.sampler
    if detail and held_for >= monitor.stall_threshold and sampler is not None:
        culprit = _route_in_progress(getattr(monitor.timeline, "running", None))
        stack = sampler.sample()
        top = sampler.top_frame([Frame(*raw) for raw in stack]) if stack else None
        line = frame_text(top) if top is not None else None
    return LoopReading(True, held_for, monitor.recent_lag(), culprit, line)


def _route_in_progress(running: Any) -> str | None:
    """The route of the request whose step the loop runs now (``Timeline.running``).

    Read from another thread while the loop thread is held in the app's code, so the span
    does not change under us. A request is usually named when it ends; naming it now calls
    the route resolver from this thread, which only reads the scope (and whose errors the
    middleware's wrapper contains), and fixes the name the loop thread would have chosen.
    """
    if running is None:
        return None
    try:
        return str(running.route or running.victim_label())
    except Exception:
        return None


class Liveness:
    """Answers ``/livez`` for the off-loop server; ``read(detail)`` is called once per
    request, on the server's thread, and must not need the loop."""

    def __init__(
        self,
        read: Callable[[bool], LoopReading],
        timeout: float,
        may_see_detail: Callable[[Mapping[str, str], str | None], bool],
    ) -> None:
        self._read = read
        self.timeout = timeout
        self._may_see_detail = may_see_detail

    def handles(self, path: str) -> bool:
        return path == PATH

    def respond(self, request: PlainRequest) -> Response:
        """The whole answer; ``headers`` keyed by lower-case name."""
        method, headers, client_host = request.method, request.headers, request.client_host
        if method not in ("GET", "HEAD"):
            reply = b"Method Not Allowed\n"
            return (
                405,
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(reply))),
                    ("Allow", "GET, HEAD"),
                ],
                reply,
            )
        try:
            detail = self._may_see_detail(headers, client_host)
        except Exception:
            detail = False
        try:
            reading = self._read(detail)
        except Exception:
            # A monitor between start and stop (or broken): nothing that says "alive".
            reading = LoopReading(running=False, held_for=0.0, lag=0.0)
        alive, _ = verdict(reading, self.timeout)
        payload = json.dumps(body(reading, self.timeout, detail=detail), separators=(",", ":"))
        data = (payload + "\n").encode()
        response_headers = [*_HEADERS, ("Content-Length", str(len(data)))]
        return (200 if alive else 503), response_headers, b"" if method == "HEAD" else data


class _Access(Protocol):
    def refusal(self, headers: Mapping[str, str], client_host: str | None) -> object: ...


def liveness_for(
    monitor: Callable[[], Watched | None], timeout: float, access: _Access
) -> Liveness:
    """``/livez`` for the off-loop server: the loop read from ``monitor()`` at each probe;
    ``access`` (the report's rules) decides who also sees the culprit route and line."""

    def read(detail: bool) -> LoopReading:
        return read_monitor(monitor(), perf_counter(), detail=detail)

    return Liveness(read, timeout, lambda headers, client: access.refusal(headers, client) is None)
