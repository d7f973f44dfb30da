"""Real uvicorn servers and a real wrk, as the overhead and GC benchmarks drive them.

A ``Server`` is one uvicorn process serving one app of ``benchmarks/apps.py``, pinned to a core
with ``taskset``; ``wrk`` loads it from another core and reports, through a small Lua ``done``
hook, the latency percentiles wrk's own ``--latency`` does not print (p99.9).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FLAVOURS: dict[str, tuple[str, ...]] = {
    "plain": ("--loop", "asyncio", "--http", "h11"),
    "standard": ("--loop", "uvloop", "--http", "httptools"),
}
"""``uvicorn`` and ``uvicorn[standard]``: the two ways uvicorn is deployed."""

# wrk calls done() once at the end; latencies are in microseconds.
_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("STATS %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, e.connect + e.read + e.write + e.timeout, e.status,
    latency.mean))
end
"""
_STATS = re.compile(r"^STATS ((?:-?\d+ ?){9})$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Load:
    """What one wrk run saw."""

    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    errors: int
    non_2xx: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass
class Server:
    label: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    loop: str = "?"
    probe: str | None = None

    def cpu_seconds(self) -> float:
        """CPU time of all the server's threads, to the nanosecond (Linux schedstat)."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            # a thread that ended between listing and reading counts no more
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9

    def log_lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cpu: str | None, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command] if cpu is not None else command


def get_json(url: str, timeout: float = 5.0) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: dict[str, object] = json.loads(response.read())
        return data


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5.0) as response:
        text: str = response.read().decode()
        return text


@contextmanager
def serve(
    label: str, flavour: str, env: Mapping[str, str], cpu: str | None, logs: Path
) -> Iterator[Server]:
    """One uvicorn process for ``benchmarks.apps:from_env`` configured by ``env``.

    Polls ``/_probe`` until it answers (30 s at most). Its output goes to a file in ``logs``:
    stall warnings are read from there after the run instead of mixing with the figures.
    """
    port = free_port()
    command = pinned(
        cpu,
        [
            sys.executable, "-m", "uvicorn", "--factory", "benchmarks.apps:from_env",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--no-access-log", "--lifespan", "on", *FLAVOURS[flavour],
        ],
    )  # fmt: skip
    # BENCH_PACKAGE_DIR: where to import stallwatch from instead of the checkout (--at REV).
    paths = [env.get("BENCH_PACKAGE_DIR", ""), str(ROOT)]
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    log = logs / f"{label.replace('/', '-')}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            # cwd heads sys.path under ``python -m``: the exported package must win over it
            command,
            cwd=env.get("BENCH_PACKAGE_DIR") or ROOT,
            env=full_env,
            start_new_session=True,
            stdout=out,
            stderr=out,
        )
    server = Server(label, f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 30.0
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{label} exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
                )
            try:
                info = get_json(server.url + "/_probe", timeout=2.0)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{label} did not answer within 30 s") from None
                time.sleep(0.1)
        server.loop = str(info["loop"])
        server.probe = None if info["probe"] is None else str(info["probe"])
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wrk(url: str, *, seconds: int, connections: int, cpu: str | None, script: Path) -> Load:
    """One closed-loop wrk run: ``connections`` keep-alive connections on one thread."""
    command = pinned(
        cpu,
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
    )
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = _STATS.search(out)
    if found is None:
        raise RuntimeError(f"no STATS line in wrk output:\n{out}")
    n, duration, p50, p99, p999, top, errors, status, _mean = (float(v) for v in found[1].split())
    return Load(int(n), duration / 1e6, p50, p99, p999, top, int(errors), int(status))


def package_at(rev: str, directory: Path) -> Path:
    """The ``stallwatch`` package as committed at ``rev``, exported under ``directory``."""
    out = directory / f"stallwatch-at-{rev.replace('/', '_')}"
    out.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", rev, "stallwatch"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def rev_name(rev: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


@contextmanager
def wrk_script(directory: Path) -> Iterator[Path]:
    path = directory / "stats.lua"
    path.write_text(_LUA)
    yield path
