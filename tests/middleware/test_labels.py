"""Labels are route templates and known methods: client input can never grow the label set.

A scanner sending thousands of random paths and made-up methods must leave the exposition
the size it was; path parameters never appear; routes behind a mount or an included router
are named with their whole template.
"""

from __future__ import annotations

import random
import string
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.middleware_support import FRAMEWORKS, KNOWN_METHODS, AppSpec, serve

DURATION = "stallwatch_http_request_duration_seconds_count"
H11 = ("--loop", "asyncio", "--http", "h11")
"""h11 accepts any method token; httptools only those it knows, and answers the rest itself."""


def random_path(rng: random.Random) -> str:
    depth = rng.randint(1, 4)
    return "/" + "/".join(
        "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(3, 12)))
        for _ in range(depth)
    )


def fetch_all(base: str, requests: list[tuple[str, str]], threads: int = 4) -> list[int]:
    """Send (method, path) pairs over a few keep-alive connections; returns the statuses
    (in no particular order)."""
    chunks = [requests[i::threads] for i in range(threads)]

    def run(chunk: list[tuple[str, str]]) -> list[int]:
        with httpx.Client(base_url=base, timeout=10.0) as client:
            return [client.request(method, path).status_code for method, path in chunk]

    with ThreadPoolExecutor(threads) as pool:
        return [status for statuses in pool.map(run, chunks) for status in statuses]


@pytest.mark.parametrize("spec", FRAMEWORKS, ids=str)
def test_thousands_of_random_404_paths_make_one_label_set(spec: AppSpec, tmp_path: Path) -> None:
    rng = random.Random(3)
    paths = sorted({random_path(rng) for _ in range(2000)})
    with serve(spec, tmp_path) as server:
        statuses = fetch_all(server.base, [("GET", path) for path in paths])
        metrics = server.metrics()

    assert statuses == [404] * len(paths)
    unmatched = [
        labels for labels in metrics.labelsets(DURATION) if labels["route"] == "<unmatched>"
    ]
    assert unmatched == [{"method": "GET", "route": "<unmatched>", "status": "404"}]
    assert metrics.value(DURATION, method="GET", route="<unmatched>", status="404") == len(paths)
    # Every per-route metric, not only latency, has the one label value for them.
    for name in (
        "stallwatch_route_loop_hold_seconds_count",
        "stallwatch_route_loop_busy_seconds_total",
    ):
        assert {labels["route"] for labels in metrics.labelsets(name)} <= {"/", "<unmatched>"}
    assert not any(path in metrics.text for path in paths)
    assert metrics.internal_errors() == 0


@pytest.mark.parametrize("spec", FRAMEWORKS, ids=str)
def test_made_up_methods_are_other(spec: AppSpec, tmp_path: Path) -> None:
    rng = random.Random(5)
    methods = sorted(
        {"X" + "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 8))) for _ in range(50)}
    )
    with serve(spec, tmp_path, args=H11) as server:
        statuses = fetch_all(
            server.base, [(m, "/ping") for m in methods] + [(m, "/nowhere") for m in methods]
        )
        statuses += fetch_all(server.base, [("PATCH", "/ping"), ("DELETE", "/nowhere")], 1)
        metrics = server.metrics()

    assert sorted(statuses) == [404] * (len(methods) + 1) + [405] * (len(methods) + 1)
    assert {labels["method"] for labels in metrics.labelsets(DURATION)} <= KNOWN_METHODS | {"OTHER"}
    assert metrics.value(DURATION, method="OTHER", route="/ping", status="405") == len(methods)
    assert metrics.value(DURATION, method="OTHER", route="<unmatched>", status="404") == len(
        methods
    )
    # Known methods keep their name even where the route does not allow them.
    assert metrics.value(DURATION, method="PATCH", route="/ping", status="405") == 1
    assert metrics.value(DURATION, method="DELETE", route="<unmatched>", status="404") == 1
    assert not any(method in metrics.text for method in methods)
    assert metrics.internal_errors() == 0


@pytest.mark.parametrize("spec", FRAMEWORKS, ids=str)
def test_routes_are_named_by_their_full_template(spec: AppSpec, tmp_path: Path) -> None:
    """Path parameters never reach a label; prefixes of routers and mounts always do."""
    ids = [uuid.uuid4().hex for _ in range(20)]
    templates = {
        "/items/{}": "/items/{item_id}",
        "/api/v1/users/{}": "/api/v1/users/{user_id}",  # include_router(prefix=) / Mount
        "/sub/things/{}": "/sub/things/{thing_id}",  # a mounted sub-application
    }
    with serve(spec, tmp_path) as server:
        statuses = fetch_all(
            server.base, [("GET", path.format(i)) for path in templates for i in ids]
        )
        metrics = server.metrics()

    assert statuses == [200] * len(templates) * len(ids)
    for template in templates.values():
        assert metrics.value(DURATION, method="GET", route=template, status="200") == len(ids)
        assert metrics.value("stallwatch_route_loop_hold_seconds_count", route=template) == len(ids)
    assert not any(i in metrics.text for i in ids)
    assert metrics.internal_errors() == 0
