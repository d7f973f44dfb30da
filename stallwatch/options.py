"""Every option stallwatch takes, declared and validated once.

``LoopMonitor`` takes the ``MonitorOptions``; ``StallwatchMiddleware`` takes the
``MiddlewareOptions`` and passes the rest through to the monitor it starts. Both are checked
when they are built, so a wrong value fails where it is written, at start-up, with an error
that names the option, never later inside a request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from prometheus_client import CollectorRegistry

from .metrics import validate_buckets


def _seconds(name: str, value: object, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low} to {high} seconds, got {value!r}")


def _flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _registry(value: object) -> None:
    if value is not None and not isinstance(value, CollectorRegistry):
        raise TypeError(f"registry must be a prometheus_client CollectorRegistry, got {value!r}")


def _buckets(name: str, value: Sequence[float] | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of numbers, got {value!r}")
    try:
        return validate_buckets(name, value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be positive, strictly increasing numbers, got {value!r}"
        ) from None


def _in_app(value: object) -> tuple[str, ...]:
    from .stall.in_app import resolve_in_app  # the in-app rule knows how a module maps to its files

    return resolve_in_app(value)


@dataclass(frozen=True, slots=True)
class MonitorOptions:
    """How one event loop is watched (``LoopMonitor(**options)``)."""

    interval: float = 0.010
    """Heartbeat period: the resolution of the lag histogram."""
    stall_threshold: float = 0.020
    """A busy stretch at least this long is a stall: an event, a log line, a stack."""
    floor: float = 0.001
    """Shorter busy stretches freeze nobody: they cost no bookkeeping at all."""
    sample_interval: float = 0.005
    """How often the watchdog reads the loop thread's stack while the loop is held."""
    profile: bool = True
    """Sample the loop thread while it is busy, for the line profile by route (docs/profile.md)."""
    profile_rate: float = 100.0
    """Profile samples per busy second of the loop (the watchdog looks every 1/rate s)."""
    profile_lines: int = 20
    """Lines the profile shows per route; the rest are one ``(other lines)`` row."""
    history: int = 100
    """How many stall events ``recent_stalls()`` and the report keep."""
    registry: CollectorRegistry | None = None
    lag_buckets: tuple[float, ...] | None = None
    log_every: float = 10.0
    log_burst: int = 5
    """At most ``log_burst`` stall warnings at once, refilled over ``log_every`` seconds."""
    in_app_include: tuple[str, ...] = ()
    """Module names or folders whose files are the application's code even where they are
    installed in site-packages (``("datasette",)``): the top frame is chosen among them."""
    opentelemetry: bool = False
    """Stalls as spans on the culprit's trace, stallwatch's figures on each request's server
    span, the metrics through the OpenTelemetry Metrics API, exemplars on the Prometheus
    ones (``pip install 'stallwatch[otel]'``; docs/deployment.md)."""
    opentelemetry_stacks: bool = False
    """Also send each stall's stack with its span (``code.stacktrace``): stacks leave the
    process with your traces, so this is off unless asked for, as the report is."""

    def __post_init__(self) -> None:
        _seconds("interval", self.interval, 0.001, 10.0)
        _seconds("stall_threshold", self.stall_threshold, 0.001, 60.0)
        _seconds("floor", self.floor, 0.0, float(self.stall_threshold))
        _seconds("sample_interval", self.sample_interval, 0.0005, 1.0)
        _flag("profile", self.profile)
        rate = self.profile_rate
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 1 <= rate <= 1000:
            raise ValueError(f"profile_rate must be 1 to 1000 samples a second, got {rate!r}")
        _positive("profile_lines", self.profile_lines)
        _positive("history", self.history)
        _positive("log_burst", self.log_burst)
        _seconds("log_every", self.log_every, 0.001, 86400.0)
        _registry(self.registry)
        object.__setattr__(self, "lag_buckets", _buckets("lag_buckets", self.lag_buckets))
        object.__setattr__(self, "in_app_include", _in_app(self.in_app_include))
        _flag("opentelemetry", self.opentelemetry)
        _flag("opentelemetry_stacks", self.opentelemetry_stacks)
        if self.opentelemetry_stacks and not self.opentelemetry:
            raise ValueError("opentelemetry_stacks=True needs opentelemetry=True")
        if self.opentelemetry:
            from .otel import require  # imports no OpenTelemetry: it only looks for it

            require("opentelemetry")


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, slots=True)
class MiddlewareOptions:
    """What the middleware adds on top of the monitor: naming, exposition, the report."""

    route_resolver: Callable[[Any], str | None] | None = None
    """``scope -> template or None``; see docs/routes.md for when it is called."""
    request_buckets: tuple[float, ...] | None = None
    metrics_path: str | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    report: bool = False
    """Serve the stall report (JSON and page) under ``report_path``: off by default."""
    report_path: str = "/_stallwatch"
    report_token: str | None = None
    """When set, any client presenting ``Authorization: Bearer <token>`` may read the
    report; when not, only loopback clients may."""
    server_timing: bool = False
    """Add ``Server-Timing: loop-hold;dur=…, loop-frozen;dur=…`` to every HTTP response."""
    group_status: bool = False
    """Label requests by status class (``2xx``) instead of code, for apps returning many."""
    liveness_timeout: float = 10.0
    """``/livez`` on ``metrics_port`` answers 503 once the loop has not polled for this long."""
    shed_lag: float | None = None
    """Answer new requests 503 while the loop's recent lag is above this (off when None)."""

    def __post_init__(self) -> None:
        if self.route_resolver is not None and not callable(self.route_resolver):
            raise TypeError(
                f"route_resolver must be a callable scope -> str | None, "
                f"got {self.route_resolver!r}"
            )
        object.__setattr__(
            self, "request_buckets", _buckets("request_buckets", self.request_buckets)
        )
        _path("metrics_path", self.metrics_path)
        if self.metrics_port is not None:
            check_port(self.metrics_port)
        if not isinstance(self.metrics_host, str) or not self.metrics_host:
            raise TypeError(
                f"metrics_host must be a host name or address, got {self.metrics_host!r}"
            )
        for name in ("report", "server_timing", "group_status"):
            _flag(name, getattr(self, name))
        check_path(self.report_path)
        check_token(self.report_token)
        _seconds("liveness_timeout", self.liveness_timeout, 0.001, 3600.0)
        if self.shed_lag is not None:
            _seconds("shed_lag", self.shed_lag, 0.001, 60.0)


def check_port(port: object) -> int:
    """``metrics_port``: an integer from 0 to 65535 (0: any free port)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"metrics_port must be an integer from 0 to 65535, got {port!r}")
    return port


def check_path(path: object) -> str:
    """``report_path``: an absolute path without a trailing slash."""
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or path.endswith("/")
        or any(c in path for c in "?#")
    ):
        raise ValueError(
            f"report_path must start with '/' and not end with one (e.g. '/_stallwatch'), "
            f"got {path!r}"
        )
    return path


def check_token(token: object) -> str | None:
    """``report_token``: None, or a non-empty string that can travel in an HTTP header."""
    if token is None:
        return None
    if not isinstance(token, str) or not token or token != token.strip():
        raise ValueError("report_token must be a non-empty string without surrounding spaces")
    if not token.isascii() or not token.isprintable():
        raise ValueError("report_token must be printable ASCII, to travel in a header")
    return token


def _path(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.startswith("/")):
        raise ValueError(f"{name} must be a path starting with '/', got {value!r}")


MONITOR_OPTIONS = frozenset(f.name for f in fields(MonitorOptions))


def monitor_options(owner: str, options: dict[str, Any]) -> MonitorOptions:
    """``MonitorOptions`` from keyword arguments; an unknown name is a TypeError naming it."""
    unknown = sorted(set(options) - MONITOR_OPTIONS)
    if unknown:
        raise TypeError(f"{owner} got unknown option(s): {', '.join(unknown)}")
    return MonitorOptions(**options)


MIDDLEWARE_OPTIONS = frozenset(f.name for f in fields(MiddlewareOptions))


def middleware_options(
    owner: str, options: dict[str, Any]
) -> tuple[MiddlewareOptions, MonitorOptions]:
    """The middleware's keyword arguments, split into its own options and the monitor's;
    an unknown name is a TypeError naming it."""
    unknown = sorted(set(options) - MIDDLEWARE_OPTIONS - MONITOR_OPTIONS)
    if unknown:
        raise TypeError(f"{owner} got unknown option(s): {', '.join(unknown)}")
    own = {name: value for name, value in options.items() if name in MIDDLEWARE_OPTIONS}
    rest = {name: value for name, value in options.items() if name not in MIDDLEWARE_OPTIONS}
    return MiddlewareOptions(**own), MonitorOptions(**rest)
