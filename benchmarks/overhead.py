"""Requests per second with and without stallwatch, served by real uvicorn, loaded by wrk.

Five variants of one JSON route (``benchmarks/apps.py``): bare Starlette, a no-op pure-ASGI
middleware, ``StallwatchMiddleware`` with everything on, prometheus-fastapi-instrumentator and
starlette-exporter; each under plain uvicorn (asyncio loop, h11: stallwatch times the loop's
poll) and ``uvicorn[standard]`` (uvloop, httptools: stallwatch times it from libuv, a prepare
handle and the idle-time metric, or from its heartbeat; each server reports the probe it ran).
All servers run at once pinned to one core and wait idle while another is
measured; wrk is pinned to the other core. Every variant is measured once per round, in an
order rotated each round, so slow drift of a shared machine spreads over all variants instead
of landing on one.

    python -m benchmarks.overhead                      # the full run, about 8 minutes
    python -m benchmarks.overhead --rounds 2 --duration 3 --warmup 1   # a quick check

Reported per flavour: median req/s (and the spread over rounds), the ratio to bare, the
microseconds each request costs more than bare (``1e6/rps - 1e6/rps_bare``), and the same
difference taken within each round, whose median cancels drift between rounds. Also the
server's CPU time per request (all its threads, from ``/proc/<pid>/task/*/schedstat``) and
its difference to bare within each round: on a machine shared with other work, req/s falls
whenever another process takes the server's core, CPU time per request much less so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import loadavg, machine, median, print_machine
from benchmarks.apps import EXTRA_VARIANTS, VARIANTS

ROOT = Path(__file__).resolve().parent.parent

FLAVOURS: dict[str, tuple[str, ...]] = {
    "plain": ("--loop", "asyncio", "--http", "h11"),
    "standard": ("--loop", "uvloop", "--http", "httptools"),
}
"""``uvicorn`` and ``uvicorn[standard]``: the two ways uvicorn is deployed."""

BUDGET_US = 10.0
AIM_US = 5.0
BUDGET_RATIO = 0.90


@dataclass
class Server:
    variant: str
    flavour: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    loop: str = "?"
    probe: str | None = None
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.flavour}/{self.variant}"

    def cpu_seconds(self) -> float:
        """CPU time of all the server's threads, to the nanosecond (Linux schedstat)."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            # a thread that ended between listing and reading counts no more
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cpu: str | None, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command] if cpu is not None else command


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=2.0) as response:
        data: dict[str, object] = json.loads(response.read())
        return data


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5.0) as response:
        text: str = response.read().decode()
        return text


@contextmanager
def serve(variant: str, flavour: str, cpu: str | None, logs: Path) -> Iterator[Server]:
    """One uvicorn process for ``variant``; polls ``/_probe`` until it answers (20 s at most).

    Its output goes to a file in ``logs``: stallwatch's stall warnings are read from there
    after the run instead of interleaving with the figures.
    """
    port = free_port()
    command = pinned(
        cpu,
        [
            sys.executable, "-m", "uvicorn", "--factory", f"benchmarks.apps:{variant}",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--no-access-log", "--lifespan", "on", *FLAVOURS[flavour],
        ],
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = logs / f"{flavour}-{variant}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, start_new_session=True, stdout=out, stderr=out
        )
    server = Server(variant, flavour, f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 20.0
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{server.name} exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
                )
            try:
                info = get_json(server.url + "/_probe")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{server.name} did not answer within 20 s") from None
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


_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_COUNT = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_TROUBLE = re.compile(r"^\s*(Socket errors:.*|Non-2xx or 3xx responses:.*)$", re.MULTILINE)


def wrk(url: str, *, seconds: float, connections: int, cpu: str | None) -> tuple[float, int, str]:
    """Requests per second wrk reached on ``url``, requests it made, errors it reported."""
    command = pinned(
        cpu, ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", url + "/"]
    )
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found, count = _RPS.search(out), _COUNT.search(out)
    if found is None or count is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    trouble = "; ".join(m.strip() for m in _TROUBLE.findall(out))
    return float(found.group(1)), int(count.group(1)), trouble


def stallwatch_counts(server: Server) -> tuple[float, float]:
    """Requests stallwatch recorded on ``/`` and stalls it saw: proof it measured, and how."""
    requests = stalls = 0.0
    for line in get_text(server.url + "/metrics").splitlines():
        name = line.split("{", 1)[0]
        if name == "stallwatch_http_request_duration_seconds_count" and 'route="/"' in line:
            requests += float(line.rsplit(" ", 1)[1])
        elif line.startswith("stallwatch_event_loop_stalls_total"):
            stalls += float(line.rsplit(" ", 1)[1])
    return requests, stalls


def report(servers: list[Server], rounds: int) -> dict[str, object]:
    results: dict[str, object] = {}
    for flavour in FLAVOURS:
        group = {s.variant: s for s in servers if s.flavour == flavour}
        if "bare" not in group:
            continue
        bare = group["bare"]
        bare_rps = median(bare.rps)
        print(f"\n## {flavour}: uvicorn {' '.join(FLAVOURS[flavour])} ({bare.loop})")
        print(
            "| variant | probe | median req/s | min-max req/s | ratio to bare "
            "| added us/req | added us/req, paired by round "
            "| server CPU us/req | added CPU us/req, paired |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        rows: dict[str, object] = {}
        for variant in VARIANTS + EXTRA_VARIANTS:
            server = group.get(variant)
            if server is None or not server.rps:
                continue
            rps = median(server.rps)
            added = 1e6 / rps - 1e6 / bare_rps
            paired = median([1e6 / v - 1e6 / b for v, b in zip(server.rps, bare.rps, strict=True)])
            ratio = rps / bare_rps
            cpu_us = median(server.cpu_us)
            cpu_added = median([v - b for v, b in zip(server.cpu_us, bare.cpu_us, strict=True)])
            print(
                f"| {variant} | {server.probe or '-'} | {rps:,.0f} "
                f"| {min(server.rps):,.0f}-{max(server.rps):,.0f} | {ratio:.3f} "
                f"| {added:+.1f} | {paired:+.1f} | {cpu_us:.1f} | {cpu_added:+.1f} |"
            )
            rows[variant] = {
                "probe": server.probe,
                "loop": server.loop,
                "rps": server.rps,
                "median_rps": rps,
                "ratio": ratio,
                "added_us": added,
                "added_us_paired": paired,
                "cpu_us": server.cpu_us,
                "added_cpu_us_paired": cpu_added,
                "errors": server.errors,
            }
            for error in server.errors:
                print(f"  ! {server.name}: {error}")
        results[flavour] = rows
        sw = rows.get("stallwatch")
        if isinstance(sw, dict):
            added, ratio = float(sw["added_us"]), float(sw["ratio"])
            met = added <= BUDGET_US and (flavour != "standard" or ratio >= BUDGET_RATIO)
            verdict = "within budget" if met else "OVER BUDGET"
            aim = "meets the 5 us aim" if added <= AIM_US else "misses the 5 us aim"
            print(
                f"\nstallwatch on {flavour}: {added:+.1f} us/request, ratio {ratio:.3f}: "
                f"{verdict} (<= {BUDGET_US:g} us"
                + (f", ratio >= {BUDGET_RATIO}" if flavour == "standard" else "")
                + f"); {aim}; {rounds} rounds"
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (8)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up each (3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--flavours", default="plain,standard", help="plain,standard")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"{','.join(VARIANTS)} (the default), and {','.join(EXTRA_VARIANTS)}",
    )
    parser.add_argument("--server-cpu", default="0", help="core for the servers (0)")
    parser.add_argument("--wrk-cpu", default="1", help="core for wrk (1)")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    flavours = [f for f in args.flavours.split(",") if f]
    variants = [v for v in args.variants.split(",") if v]
    for name in flavours:
        if name not in FLAVOURS:
            parser.error(f"unknown flavour {name!r}; choose from {', '.join(FLAVOURS)}")
    for name in variants:
        if name not in VARIANTS + EXTRA_VARIANTS:
            parser.error(
                f"unknown variant {name!r}; choose from {', '.join(VARIANTS + EXTRA_VARIANTS)}"
            )
    if "bare" not in variants:
        variants.insert(0, "bare")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server_cpu = args.server_cpu if pin else None
    wrk_cpu = args.wrk_cpu if pin else None

    print_machine("stallwatch overhead benchmark")
    given = argv if argv is not None else sys.argv[1:]
    print(f"command: python -m benchmarks.overhead {' '.join(given)}")
    print(
        f"setup: {args.rounds} rounds x {args.duration:g} s per variant, "
        f"warm-up {args.warmup:g} s, wrk -t1 -c{args.connections}, "
        f"servers on cpu {server_cpu}, wrk on cpu {wrk_cpu}"
    )
    before = loadavg()
    started = time.monotonic()
    with ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stallwatch-bench-")))
        servers = [
            stack.enter_context(serve(variant, flavour, server_cpu, logs))
            for flavour in flavours
            for variant in variants
        ]
        for server in servers:
            print(f"started {server.name}: loop {server.loop}, probe {server.probe}")
            if server.flavour == "standard" and server.loop != "uvloop":
                raise RuntimeError(f"{server.name} is not running uvloop")
        print("warming up...", flush=True)
        for server in servers:
            wrk(server.url, seconds=args.warmup, connections=args.connections, cpu=wrk_cpu)
        for round_no in range(args.rounds):
            shift = round_no % len(servers)
            order = servers[shift:] + servers[:shift]
            for server in order:
                cpu = server.cpu_seconds()
                rps, count, trouble = wrk(
                    server.url, seconds=args.duration, connections=args.connections, cpu=wrk_cpu
                )
                server.cpu_us.append((server.cpu_seconds() - cpu) / max(count, 1) * 1e6)
                server.rps.append(rps)
                if trouble:
                    server.errors.append(f"round {round_no + 1}: {trouble}")
            print(
                f"round {round_no + 1}/{args.rounds}: "
                + ", ".join(f"{s.name} {s.rps[-1]:,.0f}" for s in servers)
                + f" (loadavg {loadavg()})",
                flush=True,
            )
        counts = {s.flavour: stallwatch_counts(s) for s in servers if s.variant == "stallwatch"}
        warnings = {
            s.name: [line for line in s.log.read_text().splitlines() if line.strip()]
            for s in servers
        }
    results = report(servers, args.rounds)
    for flavour, (requests, stalls) in counts.items():
        print(
            f"stallwatch on {flavour} recorded {requests:,.0f} requests on '/' "
            f"and {stalls:g} stalls during the run"
        )
    for name, lines in warnings.items():
        if lines:
            print(f"{name} logged {len(lines)} lines, the first ones:")
            for line in lines[:5]:
                print(f"    {line}")
    after = loadavg()
    print(f"\nloadavg before: {before}")
    print(f"loadavg after:  {after}")
    print(f"elapsed: {time.monotonic() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "args": vars(args) | {"json": str(args.json)},
                    "loadavg_before": before,
                    "loadavg_after": after,
                    "results": results,
                    "stallwatch_counts": counts,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
