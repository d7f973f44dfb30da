"""OpenTelemetry for the demo, configured by the standard ``OTEL_*`` environment variables.

``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` name the exporters (``console``, ``otlp``,
several separated by commas, ``none``), loaded by their entry points exactly as the SDK's own
auto-configuration does (``otlp`` follows ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc`` by default,
``http/protobuf``); the exporters read their own variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ...),
the resource reads ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, the sampler
``OTEL_TRACES_SAMPLER``. One difference from the SDK: with neither exporter variable set the
demo stays without OpenTelemetry (the SDK would default to ``otlp``), so that a plain
``stallwatch-demo`` never sends anything anywhere.

    OTEL_TRACES_EXPORTER=console stallwatch-demo     # each stall's span printed as it ends
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("stallwatch.demo")

_configured: bool | None = None


def exporter_names(signal: str, env: Mapping[str, str]) -> list[str]:
    """The entry-point names ``OTEL_<SIGNAL>_EXPORTER`` asks for (``none``: no exporter)."""
    raw = env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip()
    names = [name.strip() for name in raw.split(",") if name.strip() and name.strip() != "none"]
    protocol = (
        env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    otlp = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
    return [otlp if name == "otlp" else name for name in names]


def configure(env: Mapping[str, str] = os.environ) -> bool:
    """Set the global tracer and meter providers from the environment, once per process;
    True when the demo should run stallwatch with ``opentelemetry=True``."""
    global _configured
    if _configured is not None:
        return _configured
    traces = exporter_names("traces", env)
    metrics = exporter_names("metrics", env)
    _configured = False
    if not traces and not metrics:
        return False
    try:
        from opentelemetry import metrics as metrics_api
        from opentelemetry import trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning(
            "OTEL_TRACES_EXPORTER/OTEL_METRICS_EXPORTER are set, but the OpenTelemetry SDK is "
            "not installed: pip install 'stallwatch[otel]' opentelemetry-sdk"
        )
        return False
    resource = Resource.create()
    if traces:
        provider = TracerProvider(resource=resource)
        for name in traces:
            provider.add_span_processor(
                BatchSpanProcessor(_load("opentelemetry_traces_exporter", name)())
            )
        trace.set_tracer_provider(provider)
    if metrics:
        readers = [
            PeriodicExportingMetricReader(_load("opentelemetry_metrics_exporter", name)())
            for name in metrics
        ]
        metrics_api.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    _configured = True
    return True


def _load(group: str, name: str) -> Any:
    from importlib.metadata import entry_points

    found = list(entry_points(group=group, name=name))
    if not found:
        raise ValueError(
            f"no OpenTelemetry exporter {name!r} ({group}) is installed: for otlp, "
            "pip install opentelemetry-exporter-otlp"
        )
    return found[0].load()


def fastapi_options(enabled: bool, excluded: tuple[str, ...]) -> dict[str, Any]:
    """``FastAPI(...)`` keyword arguments: where FastAPI traces requests itself, leave out the
    paths no one wants a trace of (the scrapes, the report)."""
    import inspect

    from fastapi import FastAPI

    if not enabled or "telemetry" not in inspect.signature(FastAPI).parameters:
        return {}

    def exclude(scope: Any) -> bool:
        path = scope.get("path", "")
        return isinstance(path, str) and path.startswith(excluded)

    return {"telemetry": {"exclude": exclude}}


def instrument(app: Any, excluded: tuple[str, ...]) -> None:
    """Server spans for a FastAPI that does not trace requests itself, when
    ``opentelemetry-instrumentation-fastapi`` is installed (stall spans are children of them)."""
    import inspect

    from fastapi import FastAPI

    if "telemetry" in inspect.signature(FastAPI).parameters:
        return  # FastAPI's own telemetry makes the server spans
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:
        logger.info("no server spans: pip install opentelemetry-instrumentation-fastapi")
        return
    FastAPIInstrumentor.instrument_app(app, excluded_urls=",".join(excluded))
