"""OpenTelemetry (``opentelemetry=True``): stalls on the culprit's trace, frozen time on the
victims' spans, the metrics through the Metrics API, exemplars on the Prometheus metrics.

The server tests run ``tests/apps/otel_app.py`` on real uvicorn (the standard loop, where
stretches are timed at the poll), with the SDK's in-memory span exporter and metric reader,
and read what was exported over the app's test-only routes. Each request the tests send
carries a ``traceparent`` of the test's own, so that every span is found by its trace id;
flags ``00`` make a request one that no tracer samples. A real Prometheus (Debian's), with
exemplar storage on, scrapes the app in the last test.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from stallwatch import BACKGROUND, MonitorOptions, StallwatchMiddleware
from stallwatch.events import Frame, StackSample, StallEvent
from stallwatch.metrics import metrics_for
from stallwatch.otel import meters
from stallwatch.otel.stalls import stall_attributes
from stallwatch.request.tally import RequestMetrics
from tests.apps.common import blocking_line
from tests.middleware_support import poll
from tests.servers import ROOT, free_port, running, uvicorn, wait_http

BLOCK = 0.4
IN_FLIGHT = 3
STALL = "event loop stall"
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}


def within(value: float, target: float) -> bool:
    """The issue's tolerance: max(2 ms, 5 %)."""
    return abs(value - target) <= max(0.002, 0.05 * target)


# -- without a server ----------------------------------------------------------------------------


def test_stallwatch_imports_and_watches_a_loop_without_opentelemetry() -> None:
    script = """
import asyncio, sys, time
sys.modules["opentelemetry"] = None  # as if it were not installed: any import of it fails
import stallwatch
from stallwatch import LoopMonitor, StallwatchMiddleware

async def main():
    async with LoopMonitor(stall_threshold=0.02) as monitor:
        await asyncio.sleep(0.01)
        time.sleep(0.05)
        await asyncio.sleep(0.01)
    monitor.settle()
    assert [s.cause for s in monitor.recent_stalls()] == ["blocking"], monitor.recent_stalls()
    assert monitor.telemetry is None

asyncio.run(main())
try:
    StallwatchMiddleware(lambda *a: None, opentelemetry=True)
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("opentelemetry=True without OpenTelemetry did not fail")
assert not any(name.startswith("opentelemetry.") for name in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == (
        "opentelemetry=True needs the OpenTelemetry API: pip install 'stallwatch[otel]'"
    )


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    pass


def test_the_options_are_checked_where_they_are_written() -> None:
    with pytest.raises(TypeError, match="opentelemetry must be True or False"):
        MonitorOptions(opentelemetry=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="opentelemetry_stacks must be True or False"):
        MonitorOptions(opentelemetry=True, opentelemetry_stacks="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opentelemetry_stacks=True needs opentelemetry=True"):
        StallwatchMiddleware(_no_app, opentelemetry_stacks=True)
    assert MonitorOptions(opentelemetry=True, opentelemetry_stacks=True).opentelemetry


def test_every_prometheus_metric_has_its_instrument() -> None:
    registry = CollectorRegistry()
    metrics_for(registry)
    exported = set()
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        exported.add(family.name + suffix)
    assert set(meters.PROMETHEUS_NAMES.values()) == exported
    for name in meters.PROMETHEUS_NAMES:
        assert name.startswith("stallwatch."), name
        assert name == name.lower(), name


def _event(**changes: Any) -> StallEvent:
    frames = (Frame("/srv/app.py", 10, "handler"), Frame("/srv/db.py", 42, "read"))
    fields: dict[str, Any] = {
        "started_at": 0.0, "duration": 0.1, "cause": "blocking", "culprit": "/cache/{key}",
        "culprits": {"/cache/{key}": 1.0}, "victims": {"/ping": 2}, "top_frame": frames[-1],
        "stacks": (StackSample(frames, 5),), "sampled": True, "task": None, "gc_seconds": 0.0,
        "loop_cpu_ratio": 1.0,
    }  # fmt: skip
    fields.update(changes)
    return StallEvent(**fields)


def test_a_stall_span_names_the_line_and_sends_the_stack_only_when_asked() -> None:
    attributes = stall_attributes(_event(), stacks=False)
    assert attributes == {
        "stallwatch.cause": "blocking",
        "stallwatch.culprit": "/cache/{key}",
        "stallwatch.allowed": False,
        "stallwatch.victims": 2,
        "code.function.name": "read",
        "code.file.path": "/srv/db.py",
        "code.line.number": 42,
    }
    stack = stall_attributes(_event(), stacks=True)["code.stacktrace"]
    assert stack == (
        "Traceback (most recent call last):\n"
        '  File "/srv/app.py", line 10, in handler\n'
        '  File "/srv/db.py", line 42, in read'
    )
    bare = stall_attributes(_event(top_frame=None, stacks=(), sampled=False), stacks=True)
    assert not any(key.startswith("code.") for key in bare)


def test_exemplars_ride_the_tallies_to_prometheus() -> None:
    registry = CollectorRegistry()
    requests = RequestMetrics(metrics_for(registry), group_status=False)
    traced = {"trace_id": "a" * 32, "span_id": "b" * 16}
    requests.add("GET", "/ping", 200, 0.03, 0.001, 0.001, {"/cache": 0.02}, 0.001, traced)
    requests.add("GET", "/ping", 200, 0.004, 0.001, 0.001, {"/cache": 0.01}, 0.001)
    requests.flush(None, None)
    text = openmetrics_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    buckets = {
        s.labels["le"]: s
        for s in families["stallwatch_http_request_duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets["0.05"].exemplar is not None
    assert buckets["0.05"].exemplar.labels == traced
    assert buckets["0.05"].exemplar.value == pytest.approx(0.03)
    assert buckets["0.005"].exemplar is None  # the untraced request's bucket
    [frozen] = [
        s
        for s in families["stallwatch_request_frozen_seconds"].samples
        if s.name.endswith("_total")
    ]
    assert frozen.value == pytest.approx(0.03)  # both requests, counted once
    assert frozen.exemplar is not None
    assert frozen.exemplar.labels == traced
    assert frozen.exemplar.value == pytest.approx(0.02)  # that request's own seconds
    assert b"trace_id" not in generate_latest(registry)  # the text format has no exemplars


# -- real uvicorn ---------------------------------------------------------------------------------


def traceparent(*, sampled: bool = True) -> tuple[dict[str, str], str]:
    """A W3C ``traceparent`` header of a fresh trace, and that trace's id."""
    trace_id = secrets.token_hex(16)
    flags = "01" if sampled else "00"
    return {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"}, trace_id


class OtelServer:
    def __init__(self, base: str, metrics_port: int | None = None) -> None:
        self.base = base
        self.metrics_port = metrics_port
        self.client = httpx.Client(base_url=base, timeout=30.0)

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        response = self.client.get(path, params=params, headers=headers)
        response.raise_for_status()
        return response.json()

    def spans(self, trace_id: str | None = None) -> list[dict[str, Any]]:
        spans: list[dict[str, Any]] = self.get("/_test/spans")
        return spans if trace_id is None else [s for s in spans if s["trace_id"] == trace_id]

    def stalls(self) -> list[dict[str, Any]]:
        stalls: list[dict[str, Any]] = self.get("/_test/state")["stalls"]
        return stalls

    def waiting(self) -> int:
        waiting: int = self.get("/_test/state")["waiting"]
        return waiting


@dataclass(frozen=True)
class Blocked:
    """One block while requests waited: what the app measured and what was exported."""

    seconds: float
    culprit: str
    """The trace id of the request that blocked."""
    victims: list[str]
    stall: dict[str, Any]
    """The stall's event, as the monitor recorded it (``span_id`` of its span added)."""


def block_while_others_wait(server: OtelServer, route: str = "/block/task") -> Blocked:
    server.get(route, seconds=0)  # the first call imports and builds what it uses
    known = len(server.stalls())
    victims = [traceparent() for _ in range(IN_FLIGHT)]
    failures: list[BaseException] = []

    def wait(item: int) -> None:
        try:
            headers, _ = victims[item]
            httpx.get(
                f"{server.base}/items/{item}", params={"delay": 0.8}, headers=headers, timeout=30
            ).raise_for_status()
        except BaseException as exc:  # pragma: no cover - shown by the assert below
            failures.append(exc)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(IN_FLIGHT)]
    for thread in threads:
        thread.start()
    # Polled sparingly: each poll is a request, and a request's time on the loop is time
    # the waiting requests are frozen by it.
    deadline = time.monotonic() + 10
    while server.waiting() < IN_FLIGHT:
        assert time.monotonic() < deadline, "the requests never got to wait"
        time.sleep(0.05)
    headers, culprit = traceparent()
    blocked: float = server.get(route, headers=headers, seconds=BLOCK)["blocked"]
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    stalls = poll(
        lambda: [s for s in server.stalls()[known:] if s["culprit"] == route] or None,
        f"the stall blamed on {route}",
    )
    assert len(stalls) == 1, stalls
    return Blocked(blocked, culprit, [trace for _, trace in victims], stalls[0])


def stalled_trace(server: OtelServer, trace_id: str) -> list[dict[str, Any]]:
    """The spans of a trace, once its stall's span is among them (the watchdog ends it)."""

    def ended() -> list[dict[str, Any]] | None:
        spans = server.spans(trace_id)
        return spans if any(s["name"] == STALL for s in spans) else None

    return poll(ended, f"the stall's span in trace {trace_id}")


def only(spans: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [s for s in spans if all(s[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, spans)
    return found[0]


def start_server(tmp: Path, loop: str = "asyncio", **env: str) -> Iterator[OtelServer]:
    env = {"SW_STALL_THRESHOLD": "0.1", "SW_STATE_DIR": str(tmp), **env}
    with uvicorn(
        "tests.apps.otel_app:served",
        args=("--loop", loop),
        env=env,
        ready_path="/_test/state",
    ) as base:
        server = OtelServer(base, int(env["SW_METRICS_PORT"]) if "SW_METRICS_PORT" in env else None)
        try:
            yield server
        finally:
            server.client.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtelServer]:
    """stallwatch inside ``FastAPIInstrumentor``'s middleware, the metrics served off the loop
    too; no ``BaseHTTPMiddleware``, so that a request answers in the step that resumed it."""
    yield from start_server(tmp_path_factory.mktemp("otel"), SW_METRICS_PORT=str(free_port()))


@pytest.fixture(
    scope="module",
    params=[
        ("inside", "asyncio"),
        ("outside", "asyncio"),
        ("native", "asyncio"),
        ("inside", "uvloop"),
    ],
    ids=["inside", "outside", "native", "inside-uvloop"],
)
def placed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OtelServer]:
    """Each place stallwatch can have beside the tracing: inside the OpenTelemetry middleware,
    outside it, inside FastAPI's own telemetry (where this FastAPI has it); and uvloop."""
    position, loop = request.param
    # Not by importing the app here: it sets the global providers, for every later test.
    if position == "native" and "telemetry" not in inspect.signature(FastAPI).parameters:
        pytest.skip("this FastAPI has no telemetry of its own")
    yield from start_server(
        tmp_path_factory.mktemp("otel"), loop, SW_BASEHTTP="inside", SW_OTEL_POSITION=position
    )


@pytest.fixture(scope="module")
def blocked(placed: OtelServer) -> Blocked:
    return block_while_others_wait(placed)


def test_a_stall_is_one_span_under_the_culprits_server_span_naming_the_line(
    placed: OtelServer, blocked: Blocked
) -> None:
    trace = stalled_trace(placed, blocked.culprit)
    stall = only(trace, name=STALL)
    server_span = only(trace, kind="SERVER")
    assert stall["parent_id"] == server_span["span_id"]
    assert stall["span_id"] == blocked.stall["span_id"]
    attributes = stall["attributes"]
    assert attributes["stallwatch.culprit"] == "/block/task"
    assert attributes["stallwatch.cause"] == "blocking"
    filename, line = blocking_line("sleep")
    assert (attributes["code.file.path"], attributes["code.line.number"]) == (filename, line)
    assert attributes["code.function.name"] == "block_sleep"
    assert attributes["stallwatch.started_by"].endswith(" in in_task")
    assert "code.stacktrace" not in attributes  # stacks stay home unless asked for
    # Back-dated to the stretch: its duration is the stall's, it lies inside the request.
    assert (stall["end"] - stall["start"]) / 1e9 == pytest.approx(
        blocked.stall["duration"], abs=1e-6
    )
    assert within(blocked.stall["duration"], blocked.seconds)
    assert server_span["start"] <= stall["start"] < stall["end"] <= server_span["end"]
    assert abs(stall["start"] / 1e9 - blocked.stall["started_at"]) < 0.005
    # The culprit: its longest step is the block, and nobody froze it.
    assert blocked.seconds <= server_span["attributes"]["stallwatch.loop_hold"]
    assert within(server_span["attributes"]["stallwatch.loop_hold"], blocked.seconds)
    assert server_span["attributes"]["stallwatch.frozen"] < 0.02
    assert server_span["links"] == []


def test_the_waiting_requests_spans_carry_their_frozen_seconds_and_the_link(
    placed: OtelServer, blocked: Blocked
) -> None:
    for trace_id in blocked.victims:
        span = only(placed.spans(trace_id), kind="SERVER")
        attributes = span["attributes"]
        assert within(attributes["stallwatch.frozen"], blocked.seconds), (
            attributes,
            blocked.seconds,
        )
        assert attributes["stallwatch.frozen_by"] == "/block/task"
        assert attributes["stallwatch.loop_hold"] < 0.02
        assert span["links"] == [{"trace_id": blocked.culprit, "span_id": blocked.stall["span_id"]}]


def test_a_request_that_ends_inside_the_stall_links_to_it(server: OtelServer) -> None:
    """It ends (and its span with it) before the stall does: the stall's span is started
    then, under the request that is holding the loop, and the stall's end reuses it."""
    at = server.get("/_test/clock")["now"] + 0.5
    blocker, culprit = traceparent()
    victim, victim_trace = traceparent()
    results: dict[str, Any] = {}

    def call(name: str, path: str, headers: dict[str, str], **params: Any) -> None:
        results[name] = httpx.get(
            f"{server.base}{path}", params={"at": at, **params}, headers=headers, timeout=30
        ).json()

    first = threading.Thread(
        target=call, args=("block", "/at/block", blocker), kwargs={"seconds": 0.3}
    )
    first.start()
    # The blocker waits first, so it runs first when both wake.
    poll(lambda: server.get("/_test/state")["gated"] == 1, "the blocker at the gate")
    call("item", "/at/item", victim)
    first.join(30)
    seconds = results["block"]["blocked"]
    trace = stalled_trace(server, culprit)
    stall = only(trace, name=STALL)
    assert stall["parent_id"] == only(trace, kind="SERVER")["span_id"]
    span = only(server.spans(victim_trace), kind="SERVER")
    assert span["end"] < stall["end"]  # it ended inside the stall
    assert span["links"] == [{"trace_id": culprit, "span_id": stall["span_id"]}]
    assert within(span["attributes"]["stallwatch.frozen"], seconds)
    assert span["attributes"]["stallwatch.frozen_by"] == "/at/block"


def test_a_stall_no_request_caused_is_the_root_of_a_trace(server: OtelServer) -> None:
    headers, scheduler = traceparent()
    known = len(server.stalls())
    server.get("/block/callback", headers=headers, seconds=0.15)
    event = poll(
        lambda: next((s for s in server.stalls()[known:] if s["culprit"] == BACKGROUND), None),
        "the callback's stall",
    )
    stall = poll(
        lambda: next((s for s in server.spans() if s["span_id"] == event["span_id"]), None),
        "its span",
    )
    assert stall["parent_id"] is None
    assert stall["trace_id"] != scheduler
    assert stall["attributes"]["stallwatch.culprit"] == BACKGROUND


def test_nothing_is_exported_for_requests_no_tracer_samples(server: OtelServer) -> None:
    server.get("/block/direct", seconds=0)
    known = len(server.stalls())
    headers, culprit = traceparent(sampled=False)
    server.get("/block/direct", headers=headers, seconds=0.15)
    event = poll(
        lambda: next((s for s in server.stalls()[known:] if s["culprit"] == "/block/direct"), None),
        "the stall",
    )
    assert event["span_id"] is not None  # offered to the tracer, which did not sample it
    time.sleep(0.2)
    assert server.spans(culprit) == []
    assert not [s for s in server.spans() if s["span_id"] == event["span_id"]]
    text = httpx.get(f"{server.base}/metrics", headers=OPENMETRICS, timeout=10).text
    assert culprit not in text


def exemplars(text: str, family: str, **labels: str) -> list[dict[str, str]]:
    found = []
    for metric in text_string_to_metric_families(text):
        if metric.name != family:
            continue
        for sample in metric.samples:
            if sample.exemplar is not None and labels.items() <= sample.labels.items():
                found.append(dict(sample.exemplar.labels))
    return found


def test_exemplars_on_metrics_path_and_metrics_port_when_openmetrics_is_asked_for(
    server: OtelServer,
) -> None:
    event = block_while_others_wait(server, "/block/direct")
    culprit = only(server.spans(event.culprit), kind="SERVER")
    victims = {only(server.spans(t), kind="SERVER")["span_id"]: t for t in event.victims}
    assert server.metrics_port is not None
    for url in (f"{server.base}/metrics", f"http://127.0.0.1:{server.metrics_port}/metrics"):

        def scrape(url: str = url) -> str | None:
            # Off the loop, a scrape sees the frozen seconds once the heartbeat handed them over.
            text = httpx.get(url, headers=OPENMETRICS, timeout=10).text
            return text if exemplars(text, "stallwatch_request_frozen_seconds") else None

        text = poll(scrape, f"the exemplars on {url}")
        [stall] = exemplars(
            text, "stallwatch_event_loop_stall_seconds", culprit="/block/direct", cause="blocking"
        )
        assert stall == {"trace_id": event.culprit, "span_id": culprit["span_id"]}
        durations = exemplars(
            text, "stallwatch_http_request_duration_seconds", route="/block/direct"
        )
        assert {"trace_id": event.culprit, "span_id": culprit["span_id"]} in durations
        [frozen] = exemplars(
            text,
            "stallwatch_request_frozen_seconds",
            route="/items/{item_id}",
            culprit="/block/direct",
        )
        assert victims[frozen["span_id"]] == frozen["trace_id"]  # one of the victims, its own
        plain = httpx.get(url, timeout=10).text
        assert "trace_id" not in plain  # Prometheus's text format has no exemplars


def test_the_opentelemetry_metrics_equal_the_prometheus_ones(server: OtelServer) -> None:
    block_while_others_wait(server, "/block/direct")
    both = server.get("/_test/metrics")
    prometheus = {
        (s["name"], frozenset(s["labels"].items())): s["value"] for s in both["prometheus"]
    }
    otel: dict[str, list[dict[str, Any]]] = both["otel"]
    # Every instrument whose Prometheus twin has series reports them (pools that ran no
    # work, shedding that is off and errors that never happened have none on either side).
    with_series = {
        name
        for name, twin in meters.PROMETHEUS_NAMES.items()
        if any(n in (twin, twin + "_count") for n, _ in prometheus)
    }
    assert set(otel) == with_series, set(otel) ^ with_series
    assert meters.STALL_DURATION in with_series
    assert meters.EXECUTOR_THREADS in with_series  # the pools' gauges: both pools, watched
    compared = 0
    for name, points in otel.items():
        twin = meters.PROMETHEUS_NAMES[name]
        for point in points:
            labels = point["attributes"]
            key = frozenset(labels.items())
            if "count" in point:
                assert point["count"] == prometheus[(twin + "_count", key)], (name, labels)
                assert point["sum"] == pytest.approx(prometheus[(twin + "_sum", key)], abs=1e-9)
                bounds = [*point["bounds"], math.inf]
                for bound, count in zip(
                    bounds, itertools.accumulate(point["buckets"]), strict=True
                ):
                    le = frozenset({**labels, "le": floatToGoString(bound)}.items())
                    assert count == prometheus[(twin + "_bucket", le)], (name, labels, bound)
            else:
                assert point["value"] == pytest.approx(prometheus[(twin, key)], abs=1e-9)
            compared += 1
    # And no Prometheus series without its twin.
    series = {
        (n.removesuffix("_count"), k)
        for n, k in prometheus
        if n.startswith("stallwatch_") and not n.endswith(("_created", "_bucket", "_sum"))
    }
    assert len(series) == compared, (len(series), compared)
    routes = {p["attributes"]["route"] for p in otel[meters.FROZEN_SECONDS]}
    assert "/items/{item_id}" in routes


def test_prometheus_keeps_the_culprits_trace_id_as_the_stall_histograms_exemplar(
    server: OtelServer, tmp_path: Path
) -> None:
    instance = server.base.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "otel", "static_configs": [{"targets": [instance]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prometheus = f"http://127.0.0.1:{port}"
    command = [
        "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
    ]  # fmt: skip
    with ExitStack() as stack:
        stack.enter_context(running(command, prometheus + "/-/ready", timeout=60))
        started = time.time()
        headers, culprit = traceparent()
        server.get("/block/direct", headers=headers, seconds=0.15)

        def stored() -> list[dict[str, Any]] | None:
            response = httpx.get(
                f"{prometheus}/api/v1/query_exemplars",
                params={
                    "query": 'stallwatch_event_loop_stall_seconds_bucket{culprit="/block/direct"}',
                    "start": str(started - 60),
                    "end": str(time.time() + 60),
                },
                timeout=10,
            )
            body = response.json()
            assert body["status"] == "success", body
            found = [e for series in body["data"] for e in series["exemplars"]]
            return [e for e in found if e["labels"].get("trace_id") == culprit] or None

        [exemplar] = poll(stored, "the stall's exemplar in Prometheus", timeout=30)
        assert float(exemplar["value"]) == pytest.approx(0.15, abs=0.05)


# -- the demo and the dashboard ------------------------------------------------------------------


def test_the_demo_reads_its_exporters_as_the_sdk_does() -> None:
    from demo_app.otel import exporter_names

    assert exporter_names("traces", {}) == []
    assert exporter_names("traces", {"OTEL_TRACES_EXPORTER": "none"}) == []
    assert exporter_names("traces", {"OTEL_TRACES_EXPORTER": "console, otlp"}) == [
        "console",
        "otlp_proto_grpc",
    ]
    http = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert exporter_names("metrics", http) == ["otlp_proto_http"]
    assert exporter_names("traces", http) == []


@contextmanager
def demo_logging_to(log: Path, env: dict[str, str]) -> Iterator[str]:
    """The demo on real uvicorn, its output in ``log`` (read while it runs)."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "demo_app.app:app", "--port", str(port),
        "--loop", "asyncio", "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", 60, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(30)


def test_the_demo_prints_each_stall_as_a_span_with_a_console_exporter(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    env = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "stallwatch-demo-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the batch processor prints within 0.1 s
        "PYTHONUNBUFFERED": "1",
        "DEMO_STALL_THRESHOLD": "0.01",
        "DEMO_SEED_ROWS": "1000000",  # a read of about 20 ms: every read is a stall
        "DEMO_DB": str(tmp_path / "demo.db"),
    }
    with demo_logging_to(log, env) as base:
        for i in range(3):
            httpx.get(f"{base}/cache/key-{i}", timeout=30).raise_for_status()
        text = poll(
            lambda: (
                t
                if "trace_id" in (t := httpx.get(f"{base}/metrics", headers=OPENMETRICS).text)
                else None
            ),
            "the demo's exemplars",
        )
        assert 'culprit="/cache/{key}"' in text
        printed = poll(
            lambda: t if '"name": "event loop stall"' in (t := log.read_text()) else None,
            "a stall's span printed",
        )
    assert '"stallwatch.culprit": "/cache/{key}"' in printed
    assert '"code.function.name": "read_blocking"' in printed
    assert '"service.name": "stallwatch-demo-test"' in printed


def test_the_dashboard_shows_exemplars_and_links_them_to_tempo() -> None:
    import json

    grafana = ROOT / "grafana"
    board = json.loads((grafana / "stallwatch.json").read_text())
    targets = {
        panel["title"]: panel["targets"]
        for row in board["panels"]
        for panel in [row, *row.get("panels", [])]
        if "targets" in panel
    }
    for title in ("Stall duration p99 by culprit", "Request latency p50 / p99 by route"):
        assert all(t.get("exemplar") is True for t in targets[title]), title
    exemplar_panels = {t for t, ts in targets.items() if any(x.get("exemplar") for x in ts)}
    assert exemplar_panels == {
        "Stall duration p99 by culprit",
        "Request latency p50 / p99 by route",
    }

    datasources = grafana / "provisioning" / "datasources"
    [prometheus] = yaml.safe_load((datasources / "prometheus.yml").read_text())["datasources"]
    [tempo] = yaml.safe_load((datasources / "tempo.yml").read_text())["datasources"]
    assert tempo["type"] == "tempo"
    assert prometheus["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": tempo["uid"]}
    ]
    compose = yaml.safe_load((grafana / "docker-compose.yml").read_text())["services"]
    assert "--enable-feature=exemplar-storage" in compose["prometheus"]["command"]
    assert compose["demo"]["environment"]["OTEL_TRACES_EXPORTER"] == "otlp"
    tempo_config = yaml.safe_load((grafana / "tempo.yml").read_text())
    endpoint = tempo_config["distributor"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert compose["demo"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(endpoint)
    assert tempo["url"].endswith(str(tempo_config["server"]["http_listen_port"]))
