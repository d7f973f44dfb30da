"""The Grafana dashboard and the Prometheus config, proven against a real Prometheus.

A real Prometheus scrapes the real demo (uvicorn) every second while a short load runs, first in
executor mode, then in blocking mode. Then every query of the dashboard, with its variables
substituted as Grafana would, is evaluated through Prometheus's HTTP API: each must parse and
return data, because a query that returns nothing is a broken panel.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .servers import ROOT, free_port, running, uvicorn

GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "stallwatch.json"
PROMETHEUS_YML = GRAFANA / "prometheus.yml"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves excluded."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found.extend(panels({"panels": panel.get("panels", [])}))
        if panel["type"] != "row":
            found.append(panel)
    return found


def panel_queries(board: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in panels(board) for t in p.get("targets", [])]


def annotation_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (a["name"], a["expr"])
        for a in board["annotations"]["list"]
        if a.get("datasource", {}).get("type") == "prometheus"
    ]


METRIC_NAME = re.compile(r"\b((?:stallwatch|demo)_[a-z_]+)\b")


# -- files that need no server ------------------------------------------------------------------


def test_promtool_accepts_the_scrape_config() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS_YML)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    [job] = config["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
    assert job["scrape_interval"] == "5s"


def test_the_dashboard_imports_into_grafana_10_and_11() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36  # Grafana 9.x; 39 is what 10.4 and 11 write
    assert board["uid"] == "stallwatch"
    assert board["id"] is None  # Grafana assigns it on import
    assert board["refresh"] == "10s"
    assert board["time"] == {"from": "now-15m", "to": "now"}

    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["query"]["query"] == (
        "label_values(stallwatch_event_loop_lag_seconds_count, job)"
    )
    assert variables["instance"]["query"]["query"] == (
        'label_values(stallwatch_event_loop_lag_seconds_count{job=~"$job"}, instance)'
    )

    # No fixed data source uid anywhere: only the variable, or Grafana's own annotations.
    uids = re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text())
    assert set(uids) - {board["uid"]} <= {"${datasource}", "-- Grafana --"}

    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_panel_says_in_one_line_how_to_read_it() -> None:
    for panel in panels(dashboard()):
        description = panel.get("description", "")
        assert len(description) >= 40, panel["title"]
        assert "\n" not in description, panel["title"]
        assert panel.get("targets"), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    exprs = "\n".join(t["expr"] for _, t in panel_queries(dashboard()))
    for needed in (
        "histogram_quantile(0.5, sum by (le) (rate(stallwatch_event_loop_lag_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(stallwatch_event_loop_lag_seconds_bucket",
        "sum by (culprit) (rate(stallwatch_event_loop_stalls_total",
        "sum by (culprit) (increase(stallwatch_event_loop_stall_seconds_sum",
        "sum by (le, route) (rate(stallwatch_http_request_duration_seconds_bucket",
        "sum by (route, culprit) (rate(stallwatch_request_frozen_seconds_total",
        "sum by (route) (rate(stallwatch_route_loop_busy_seconds_total",
        "sum by (le, route) (rate(stallwatch_route_loop_hold_seconds_bucket",
        "sum by (cause) (rate(stallwatch_event_loop_stall_seconds_sum",
        "demo_cache_mode",
    ):
        assert needed in exprs
    types = {p["type"] for p in panels(dashboard())}
    assert {"heatmap", "table", "state-timeline"} <= types
    modes = {name for name, _ in annotation_queries(dashboard())}
    assert modes == {"Demo cache mode: blocking", "Demo cache mode: executor"}


def test_compose_and_provisioning_load_the_dashboard_from_these_files() -> None:
    compose = yaml.safe_load((GRAFANA / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"demo", "prometheus", "grafana", "tempo"}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (GRAFANA / source).exists(), f"{name} mounts a missing {source}"
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    assert "--port 8000" in services["demo"]["command"][-1]
    # Prometheus and Grafana live in the demo's network namespace: 127.0.0.1 is shared.
    assert services["prometheus"]["network_mode"] == services["grafana"]["network_mode"]
    assert services["grafana"]["network_mode"] == "service:demo"
    assert services["tempo"]["network_mode"] == "service:demo"

    provisioning = GRAFANA / "provisioning"
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://127.0.0.1:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "stallwatch.yml").read_text())[
        "providers"
    ]
    mounted = [v.split(":")[1] for v in services["grafana"]["volumes"]]
    assert provider["options"]["path"] + "/stallwatch.json" in mounted
    assert "/etc/grafana/provisioning" in mounted


# -- a real demo, a real Prometheus, a short load ------------------------------------------------


@dataclass(frozen=True)
class Stack:
    demo: str
    prometheus: str
    job: str
    instance: str
    started: float
    """Wall-clock time (as Prometheus stamps samples) the load began."""
    at: float
    """When the queries are evaluated: a few scrapes after the load ended, whenever a test runs."""
    sent: Counter[str]


async def drive(base: str, seconds: float, concurrency: int, limit: int) -> Counter[str]:
    """Closed-loop mixed traffic, bounded in time and count: half on /cache/{key}."""
    sent: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def user(n: int) -> None:
            i = 0
            while time.monotonic() < stop_at and sum(sent.values()) < limit:
                kind = ("ping", "items", "cache", "cache")[n % 4]
                path = {"ping": "/ping", "items": f"/items/{i}", "cache": f"/cache/key-{i % 500}"}
                response = await client.get(path[kind])
                assert response.status_code == 200, response.text
                sent[kind] += 1
                i += 1

        await asyncio.gather(*(user(n) for n in range(concurrency)))
    return sent


class PrometheusAPI:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
        return self._get("/api/v1/query", params)

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": str(start), "end": str(end), "step": "1"}
        return self._get("/api/v1/query_range", params)

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        response = httpx.get(self.base + path, params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200, f"{params['query']}: {body.get('error')}"
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, expr: str, deadline_s: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + deadline_s
        while True:
            result = self.query(expr)
            if result:
                return result
            assert time.monotonic() < deadline, f"Prometheus never had {expr}"
            time.sleep(0.25)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    [job] = config["scrape_configs"]
    env = {"DEMO_MODE": "executor", "DEMO_STALL_THRESHOLD": "0.01", "DEMO_DB": str(tmp / "demo.db")}
    with ExitStack() as stack:
        # The standard loop: its poll probe times every stretch exactly, so a /ping that waited
        # behind /cache/{key} in the same stretch is charged to it (uvloop's probe cannot).
        demo = stack.enter_context(
            uvicorn("demo_app.app:app", args=["--loop", "asyncio"], env=env, ready_path="/ping")
        )
        instance = demo.removeprefix("http://")
        # The repository's scrape config, pointed at this demo and scraping every second.
        config["global"]["scrape_interval"] = "1s"
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": [instance]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        prometheus = f"http://127.0.0.1:{port}"
        command = [
            "prometheus", f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        ]  # fmt: skip
        stack.enter_context(running(command, prometheus + "/-/ready", timeout=60))
        api = PrometheusAPI(prometheus)
        name = job["job_name"]
        api.wait_for(f'up{{job="{name}"}} == 1')

        started = time.time()
        sent = asyncio.run(drive(demo, seconds=3, concurrency=24, limit=5000))
        switched = httpx.post(demo + "/demo/mode", json={"mode": "blocking"}, timeout=10)
        assert switched.json() == {"mode": "blocking"}
        sent += asyncio.run(drive(demo, seconds=6, concurrency=24, limit=10000))
        ended = time.time()
        # Several scrapes after the load, so the last counts are in and rates are stable.
        [last] = api.wait_for(f'timestamp(up{{job="{name}"}}) > {ended + 3}')
        at = float(last["value"][1])
        yield Stack(demo, prometheus, name, instance, started, at, sent)


def substitute(expr: str, stack: Stack) -> str:
    """Grafana's variables, as it would send them for this demo."""
    values = {
        "job": stack.job,
        "instance": stack.instance,
        "datasource": "prometheus",
        "__rate_interval": "30s",  # the whole load fits in every window
        "__interval": "5s",
        "__range": "60s",
        "__range_s": "60",
    }

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def finite(result: list[dict[str, Any]]) -> bool:
    values = [s["value"][1] for s in result if "value" in s]
    values += [v[1] for s in result for v in s.get("values", [])]
    return any(math.isfinite(float(v)) for v in values)


def test_promtool_finds_no_problem_in_the_demo_metrics(stack: Stack) -> None:
    text = httpx.get(stack.demo + "/metrics", timeout=10).text
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_every_metric_the_dashboard_names_is_exported_by_the_demo(stack: Stack) -> None:
    exported: set[str] = set()
    text = httpx.get(stack.demo + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        exported |= {family.name + s for s in suffixes.get(family.type, ("",))}
    board = dashboard()
    exprs = [t["expr"] for _, t in panel_queries(board)] + [e for _, e in annotation_queries(board)]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used, "no metric names found: the pattern is wrong"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_the_variables_list_the_demo(stack: Stack) -> None:
    lag_count = "stallwatch_event_loop_lag_seconds_count"
    for label, match in (("job", lag_count), ("instance", f'{lag_count}{{job=~"{stack.job}"}}')):
        response = httpx.get(
            f"{stack.prometheus}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10
        )
        assert getattr(stack, label) in response.json()["data"]


def test_the_load_ran_in_both_modes_and_stalled_the_loop(stack: Stack) -> None:
    assert stack.sent["cache"] > 200, stack.sent
    assert stack.sent["ping"] > 50, stack.sent
    api = PrometheusAPI(stack.prometheus)
    stalls = api.query(f'sum(stallwatch_event_loop_stalls_total{{job="{stack.job}"}})', stack.at)
    assert float(stalls[0]["value"][1]) > 0


@pytest.mark.parametrize(
    ("title", "ref"), [(title, t["refId"]) for title, t in panel_queries(dashboard())]
)
def test_every_panel_query_returns_data(stack: Stack, title: str, ref: str) -> None:
    [target] = [t for name, t in panel_queries(dashboard()) if name == title and t["refId"] == ref]
    expr = substitute(target["expr"], stack)
    result = PrometheusAPI(stack.prometheus).query(expr, stack.at)
    assert result, f"panel {title!r} query {ref} returned nothing: {expr}"
    assert finite(result), f"panel {title!r} query {ref} returned only NaN: {result}"


@pytest.mark.parametrize("name", [name for name, _ in annotation_queries(dashboard())])
def test_every_annotation_query_marks_its_mode(stack: Stack, name: str) -> None:
    [expr] = [e for n, e in annotation_queries(dashboard()) if n == name]
    api = PrometheusAPI(stack.prometheus)
    expr = substitute(expr, stack)
    api.query(expr, stack.at)  # parses as an instant query too
    # Grafana evaluates annotations over the dashboard's range: the run saw both modes.
    result = api.query_range(expr, stack.started, stack.at)
    assert result, f"annotation {name!r} returned nothing over the run: {expr}"
    assert finite(result)


def test_the_frozen_panel_says_ping_was_frozen_by_the_cache_route(stack: Stack) -> None:
    [target] = [t for title, t in panel_queries(dashboard()) if title.startswith("Frozen time")]
    result = PrometheusAPI(stack.prometheus).query(substitute(target["expr"], stack), stack.at)
    frozen = {(s["metric"]["route"], s["metric"]["culprit"]): float(s["value"][1]) for s in result}
    assert frozen.get(("/ping", "/cache/{key}"), 0.0) > 0.0, frozen
