"""What the middleware answers itself, before the app: ``/metrics`` (``metrics_path``), the
report and its API (``report``), ``/livez`` and the metrics on the off-loop port
(``metrics_port``), and the refusal of new requests while the loop lags (``shed_lag``).

Each is built here once, from the options, and the middleware keeps only what it reads per
request; the decisions each one makes live in its own module (``exposition``, ``report``,
``liveness``, ``shedding``). The monitor is read through a getter, never held: the
middleware attaches it at lifespan start-up or at the first request, and lets it go at
shutdown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._types import ASGIApp, Scope
from .exposition import OffLoopServer, metrics_app
from .liveness import Liveness, liveness_for
from .report.http import ReportApp
from .shedding import Shedder

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .metrics import Metrics
    from .monitor import LoopMonitor
    from .options import MiddlewareOptions


@dataclass(frozen=True, slots=True)
class Served:
    """The middleware's own endpoints; None where the options leave one out."""

    metrics_app: ASGIApp | None
    report: ReportApp | None
    off_loop: OffLoopServer | None
    shedder: Shedder | None
    liveness: Callable[[], Liveness]
    """``/livez`` as it answers now (the off-loop server builds it when it starts)."""


def served_for(
    options: MiddlewareOptions,
    registry: CollectorRegistry | None,
    metrics: Metrics,
    monitor: Callable[[], LoopMonitor | None],
    route_of: Callable[[Scope], str],
    on_error: Callable[[], None],
) -> Served:
    """Build what ``options`` ask the middleware to serve. ``route_of`` names a refused
    request (before the app routed it); ``on_error`` counts an error reading the lag."""
    report = (
        ReportApp(monitor, path=options.report_path, token=options.report_token)
        if options.report
        else None
    )

    def liveness() -> Liveness:
        # The report's access rules decide who also sees the culprit route and line, whether
        # the report is served or not.
        access = report or ReportApp(
            lambda: None, path=options.report_path, token=options.report_token
        )
        return liveness_for(monitor, options.liveness_timeout, access)

    def recent_lag() -> float | None:
        watched = monitor()
        if watched is None or not watched.running:
            return None  # not watching yet: nothing to judge by
        try:
            return watched.recent_lag()
        except Exception:
            on_error()
            return None

    return Served(
        metrics_app=metrics_app(registry) if options.metrics_path is not None else None,
        report=report,
        off_loop=None
        if options.metrics_port is None
        else OffLoopServer(options.metrics_port, options.metrics_host, registry, report, liveness),
        shedder=None
        if options.shed_lag is None
        else Shedder(options.shed_lag, recent_lag, route_of, metrics.requests_shed),
        liveness=liveness,
    )
