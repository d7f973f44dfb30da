"""What the middleware tests share: the apps under test, a server handle, metric reading, polling.

Every server is real uvicorn on 127.0.0.1 in its own process, so its default state (the
registry the app creates, the monitor, the stall history) is fresh for each test. The tests
read what the server knows through its HTTP surface only: ``/metrics``, ``/stalls``, ``/state``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import uvicorn

T = TypeVar("T")

KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}


@dataclass(frozen=True)
class AppSpec:
    """One app under test: where uvicorn finds it and where it serves its metrics."""

    name: str
    target: str
    metrics_path: str

    def __str__(self) -> str:
        return self.name


FASTAPI = AppSpec("fastapi", "tests.apps.fastapi_app:app", "/metrics")
STARLETTE = AppSpec("starlette", "tests.apps.starlette_app:app", "/metrics/")
BARE = AppSpec("bare", "tests.apps.bare_app:app", "/metrics")
FRAMEWORKS = [FASTAPI, STARLETTE]
ON_LOOPS = [
    pytest.param(FASTAPI, "asyncio", id="fastapi"),
    pytest.param(STARLETTE, "asyncio", id="starlette"),
    pytest.param(FASTAPI, "uvloop", id="fastapi-uvloop"),
]
"""(app, loop) pairs for the tests of exact accounting: both frameworks on the standard
loop, and uvloop, which stallwatch times through libuv instead of the selector."""


class Metrics:
    """One scrape, parsed: ``value(name, **labels)`` is None when the sample is absent."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float | None:
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and sample_labels == labels:
                return value
        return None

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [labels for sample_name, labels, _ in self.samples if sample_name == name]

    def by(self, name: str, label: str, **fixed: str) -> dict[str, float]:
        """Values of ``name`` keyed by ``label``, among samples whose other labels match."""
        out: dict[str, float] = {}
        for sample_name, labels, value in self.samples:
            if sample_name == name and all(labels.get(k) == v for k, v in fixed.items()):
                out[labels[label]] = value
        return out

    def internal_errors(self) -> float:
        return sum(self.by("stallwatch_internal_errors_total", "component").values())


class Server:
    """A running app: its base URL, a keep-alive client, and what it can tell about itself."""

    def __init__(self, spec: AppSpec, base: str) -> None:
        self.spec = spec
        self.base = base
        self.client = httpx.Client(base_url=base, timeout=10.0)

    def get(self, path: str, **params: Any) -> httpx.Response:
        response = self.client.get(path, params=params)
        response.raise_for_status()
        return response

    def metrics(self) -> Metrics:
        return Metrics(self.get(self.spec.metrics_path).text)

    def stalls(self) -> list[dict[str, Any]]:
        stalls: list[dict[str, Any]] = self.get("/stalls").json()
        return stalls

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.get("/state").json()
        return state


@contextmanager
def serve(
    spec: AppSpec,
    state_dir: Path,
    *,
    stall_threshold: float = 0.1,
    metrics_port: int | None = None,
    args: tuple[str, ...] = ("--loop", "asyncio"),
) -> Iterator[Server]:
    """Run ``spec`` under uvicorn (the standard loop unless ``args`` say otherwise).

    The standard loop is the default because there stallwatch times the loop's own poll:
    the exact case the issue's tolerances are written for.
    """
    env = {"SW_STALL_THRESHOLD": str(stall_threshold), "SW_STATE_DIR": str(state_dir)}
    if metrics_port is not None:
        env["SW_METRICS_PORT"] = str(metrics_port)
    with uvicorn(spec.target, args=args, env=env) as base:
        server = Server(spec, base)
        try:
            yield server
        finally:
            server.client.close()


def poll(check: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    """Call ``check`` until it returns something other than None/False, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@contextmanager
def requests_in_flight(server: Server, count: int, delay: float) -> Iterator[list[httpx.Response]]:
    """``count`` requests to ``/items/{item_id}`` parked in ``await asyncio.sleep(delay)``.

    The block yields once the app reports all of them inside the await, and waits for them
    to finish when it ends; their responses are in the yielded list by then.
    """
    responses: list[httpx.Response] = []

    def fetch(item: int) -> None:
        responses.append(httpx.get(f"{server.base}/items/{item}?delay={delay}", timeout=30.0))

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        poll(lambda: server.state()["waiting"] == count, f"{count} requests in flight")
        yield responses
    finally:
        for thread in threads:
            thread.join(30.0)
    assert [r.status_code for r in responses] == [200] * count


def frame_of(top_frame: str) -> tuple[str, int]:
    """(file, line) of a ``StallEvent.to_dict()["top_frame"]``: ``file:line in function``."""
    location = top_frame.rsplit(" in ", 1)[0]
    filename, line = location.rsplit(":", 1)
    return filename, int(line)


class RawConnection:
    """A keep-alive HTTP/1.1 connection on a bare socket, to send many requests at once.

    Python HTTP clients spend about a millisecond of CPU per request, so forty of them
    reach the server spread over tens of milliseconds; forty requests written to forty
    sockets in a loop arrive together, as they do from many real clients.
    """

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30.0)
        self.buffer = b""

    def send_get(self, path: str) -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())

    def read_response(self) -> tuple[int, bytes]:
        """(status, body) of the next response; bodies have a content-length here."""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def close(self) -> None:
        self.sock.close()
