"""``python -m demo_app.load``: open-loop load on the demo, both modes, a sweep of loads.

By default it starts the demo itself (uvicorn pinned to one CPU, this generator and its
``/ping`` probe on the others), then for each offered load runs each mode, switching it
through ``POST /demo/mode``, and prints per route what the client saw beside what stallwatch
saw, then whether the demo's claim holds. ``--url`` targets a demo that is already running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

import aiohttp

from . import report
from .openloop import (
    ProbeProcess,
    RouteLoad,
    RouteResult,
    control_session,
    offer,
    run,
    session,
)
from .report import CACHE, PING, Step
from .scrape import parse, server_view, stall_lines

MODES = ("blocking", "executor")
ITEMS = "/items/{item_id}"
DEFAULT_POOL = min(32, (os.cpu_count() or 1) + 4)
"""What ``run_in_executor(None, ...)`` gets: asyncio's default ``ThreadPoolExecutor`` size."""


def rates(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"rates must be positive numbers, got {text!r}")
    return values


def pools(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"pool sizes must be positive integers, got {text!r}")
    return values


def modes(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in MODES for v in values):
        raise argparse.ArgumentTypeError(f"modes must be among {', '.join(MODES)}, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m demo_app.load",
        description="Open-loop load on the stallwatch demo: every mode at every offered load, "
        "client latencies beside stallwatch's diagnosis.",
    )
    p.add_argument(
        "--url",
        help="a running demo (default: start one, pinned to one CPU); serve it on the standard "
        "asyncio loop, whose poll stallwatch times exactly, to see every route's frozen time",
    )
    p.add_argument(
        "--rates",
        type=rates,
        default=[100.0, 250.0, 350.0],
        help="offered /cache/{key} requests per second, comma-separated (default 100,250,350)",
    )
    p.add_argument(
        "--modes",
        type=modes,
        default=list(MODES),
        help="cache modes to run at each load (default blocking,executor)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=8.0,
        help="seconds of load per mode and load (default %(default)s)",
    )
    p.add_argument(
        "--items-rate",
        type=float,
        default=50.0,
        help="/items/{item_id} requests per second (default %(default)s)",
    )
    p.add_argument(
        "--probe-rate",
        type=float,
        default=50.0,
        help="/ping requests per second, from a separate process (default %(default)s)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=2000,
        help="client connection pool size (default %(default)s)",
    )
    p.add_argument(
        "--executor-threads",
        type=pools,
        default=[1, DEFAULT_POOL],
        help="executor pool sizes of the demos this starts, comma-separated; the first "
        "runs every mode, the others executor mode only (default "
        f"1,{DEFAULT_POOL}: one thread, then asyncio's default pool size on this machine)",
    )
    p.add_argument(
        "--seed-rows",
        type=int,
        default=None,
        help="rows of the demo this starts, i.e. the read cost (default: the demo's)",
    )
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop", "auto"),
        default="asyncio",
        help="event loop of the demo this starts (default %(default)s)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the raw figures as JSON here")
    return p


# -- the demo this generator starts ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(the server's CPU, the generator's CPUs), or Nones where pinning is not possible."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


@contextlib.contextmanager
def started_demo(
    args: argparse.Namespace,
    threads: int,
    server_cpus: set[int] | None,
    own_cpus: set[int] | None,
    log: IO[bytes],
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "demo_app",
        "--port",
        str(port),
        "--mode",
        args.modes[0],
        "--loop",
        args.loop,
        "--executor-threads",
        str(threads),
    ]
    if args.seed_rows is not None:
        command += ["--seed-rows", str(args.seed_rows)]
    # A child inherits its parent's CPU set: take the server's CPU for the moment of the
    # fork, then move this process to the others.
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)
    try:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    finally:
        if own_cpus:
            os.sched_setaffinity(0, own_cpus)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(
    client: aiohttp.ClientSession,
    base: str,
    proc: subprocess.Popen[bytes] | None,
    timeout: float = 60.0,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the demo exited with status {proc.returncode} before it answered")
        try:
            async with client.get(base + "/demo/mode") as response:
                if response.status == 200:
                    return
        except (aiohttp.ClientError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the demo at {base} did not answer within {timeout:.0f} s")
        await asyncio.sleep(0.1)


# -- one step -------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.index = 0
        self.tty = sys.stderr.isatty()
        self.label = ""
        self.duration = 0.0

    def begin(self, label: str, duration: float) -> None:
        self.index += 1
        self.label = f"[{self.index}/{self.total}] {label}"
        self.duration = duration
        if not self.tty:
            print(f"{self.label}: {duration:.0f} s of load", file=sys.stderr, flush=True)

    def __call__(self, elapsed: float, results: list[RouteResult], in_flight: int) -> None:
        if not self.tty:
            return
        done = min(max(elapsed / self.duration, 0.0), 1.0)
        bar = "#" * round(done * 24) + "-" * (24 - round(done * 24))
        sent = sum(r.sent for r in results)
        answered = sum(r.ok + r.errors for r in results)
        draining = " draining" if elapsed > self.duration else ""
        print(
            f"\r{self.label} |{bar}| {min(elapsed, self.duration):4.1f}/{self.duration:.0f} s "
            f"sent {sent} answered {answered} in flight {in_flight}{draining}   ",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def end(self, summary: str) -> None:
        if self.tty:
            print("\r\033[K", end="", file=sys.stderr)
        print(f"{self.label}: {summary}", file=sys.stderr, flush=True)


async def set_mode(client: aiohttp.ClientSession, base: str, mode: str) -> None:
    async with client.post(base + "/demo/mode", json={"mode": mode}) as response:
        body = await response.json()
        if response.status != 200 or body.get("mode") != mode:
            raise SystemExit(f"could not switch the demo to {mode} mode: {response.status} {body}")


async def settle(control: aiohttp.ClientSession, base: str, timeout: float = 30.0) -> None:
    """Wait until the demo answers ``/ping`` promptly again: requests the client gave up on
    after an overloaded step are still queued in the server, and must not spill into the
    next step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        began = time.monotonic()
        async with control.get(base + PING) as response:
            await response.read()
        if time.monotonic() - began < 0.02:
            return
        await asyncio.sleep(0.1)


async def get_text(client: aiohttp.ClientSession, url: str) -> str:
    async with client.get(url) as response:
        response.raise_for_status()
        return await response.text()


@dataclass(frozen=True)
class Target:
    """The demo under load and the three clients that talk to it."""

    base: str
    load: aiohttp.ClientSession
    control: aiohttp.ClientSession
    probe: ProbeProcess


async def run_step(
    target: Target,
    mode: str,
    threads: int | None,
    rate: float,
    duration: float,
    args: argparse.Namespace,
    progress: Progress | None,
) -> Step:
    base, control, probe = target.base, target.control, target.probe
    await settle(control, base)
    await set_mode(control, base, mode)
    before = parse(await get_text(control, base + "/metrics"))
    since = time.time()
    start = time.monotonic() + 0.2
    drain = max(3.0, min(duration, 10.0))
    probe.start(
        base,
        PING,
        PING,
        args.probe_rate,
        start=start,
        duration=duration,
        drain=drain,
    )
    loads = [
        RouteLoad(CACHE, lambda i: f"/cache/key-{(i * 7919) % 1000}", rate),
        RouteLoad(ITEMS, lambda i: f"/items/{i % 1000}", args.items_rate),
    ]
    step_label = report.mode_label(mode, threads)
    if progress is not None:
        progress.begin(f"{step_label} at {rate:.0f} cache req/s", duration)
    client_results = await offer(
        target.load,
        base,
        loads,
        start=start,
        duration=duration,
        drain=drain,
        progress=progress,
    )
    client_results.append(await probe.result())
    after = parse(await get_text(control, base + "/metrics"))
    events = json.loads(await get_text(control, base + "/demo/stalls"))
    step = Step(
        mode=mode,
        threads=threads,
        rate=rate,
        duration=duration,
        client=client_results,
        server=server_view(before, after, [CACHE, ITEMS, PING]),
        stall_lines=stall_lines(events, since),
    )
    if progress is not None:
        stalls = sum(step.server.stalls.values())
        progress.end(
            f"/ping p99 {report.ms(step.p99(PING), 0)} ms, "
            f"{report.ms(step.server.frozen_per_request(PING), 0)} ms frozen per /ping, "
            f"{stalls:.0f} stalls"
        )
    return step


async def sweep(
    base: str,
    proc: subprocess.Popen[bytes] | None,
    modes: Sequence[str],
    threads: int | None,
    args: argparse.Namespace,
    probe: ProbeProcess,
    progress: Progress,
) -> list[Step]:
    """Every mode at every load against one demo, after a short warm-up in each mode."""
    async with session(args.connections) as load, control_session() as control:
        await wait_ready(control, base, proc)
        target = Target(base, load, control, probe)
        # Warm up connections, the pool's threads and their SQLite connections, and
        # FastAPI's first requests. Not reported.
        for mode in modes:
            await run_step(target, mode, threads, min(args.rates), 1.0, args, None)
        steps = []
        for rate in args.rates:
            for mode in modes:
                steps.append(
                    await run_step(target, mode, threads, rate, args.duration, args, progress)
                )
        return steps


def describe(
    args: argparse.Namespace, started: bool, server_cpus: set[int] | None, own_cpus: set[int] | None
) -> str:
    where = (
        "the demo started by the generator (python -m demo_app"
        + f" --loop {args.loop}"
        + (f" --seed-rows {args.seed_rows}" if args.seed_rows else "")
        + ")"
        + (f", pinned to CPU {min(server_cpus)}" if server_cpus else " (not pinned)")
        if started
        else f"the demo at {args.url} (already running)"
    )
    gen = f"CPU {','.join(map(str, sorted(own_cpus)))}" if own_cpus else "unpinned"
    return (
        f"Server: {where}. Generator: {gen}. {args.duration:g} s per step.\n"
        f"Open loop: {CACHE} at the offered rate, {ITEMS} at {args.items_rate:g}/s, "
        f"{PING} at {args.probe_rate:g}/s from a separate probe process."
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    started = args.url is None
    server_cpus, own_cpus = split_cpus() if started else (None, None)
    if own_cpus:
        os.sched_setaffinity(0, own_cpus)
    # One demo per pool size when the generator starts them: the first runs every mode, the
    # others only executor mode (a pool size changes nothing in blocking mode).
    plan: list[tuple[int | None, list[str]]] = [(None, list(args.modes))]
    if started:
        plan = [
            (threads, list(args.modes) if i == 0 else [m for m in args.modes if m == "executor"])
            for i, threads in enumerate(args.executor_threads)
        ]
        plan = [(threads, modes) for threads, modes in plan if modes]
    progress = Progress(sum(len(modes) for _, modes in plan) * len(args.rates))
    steps: list[Step] = []
    banners: list[str] = []
    probe = ProbeProcess(cpus=own_cpus, connections=max(64, args.connections // 4))
    try:
        for threads, modes in plan:
            with contextlib.ExitStack() as stack:
                log = stack.enter_context(tempfile.TemporaryFile())
                proc: subprocess.Popen[bytes] | None = None
                if started:
                    assert threads is not None
                    base, proc = stack.enter_context(
                        started_demo(args, threads, server_cpus, own_cpus, log)
                    )
                else:
                    base = args.url.rstrip("/")
                try:
                    steps += run(sweep(base, proc, modes, threads, args, probe, progress))
                except BaseException:
                    if started:
                        log.seek(0)
                        sys.stderr.write(log.read().decode(errors="replace")[-5000:])
                    raise
                log.seek(0)
                banners += [
                    line
                    for line in log.read().decode(errors="replace").splitlines()
                    if line.startswith("stallwatch demo:")
                ]
    finally:
        probe.close()
    print()
    print(describe(args, started, server_cpus, own_cpus))
    for line in banners:
        print(line)
    print()
    print(report.table(steps))
    print()
    print(report.LEGEND)
    print()
    print(report.verdict(steps))
    results = [r for s in steps for r in s.client]
    send_lag = max((r.send_lag for r in results), default=0.0)
    sent = sum(r.sent for r in results)
    mean_lag = sum(r.send_lag_total for r in results) / sent if sent else 0.0
    print(
        f"Requests left the generator {mean_lag * 1e3:.2f} ms after their due time on average "
        f"and {send_lag * 1e3:.0f} ms at worst (timer slack, and any moment the generator's CPU "
        "was taken); that wait is counted in the latencies above."
    )
    if send_lag > 0.050:
        print(
            "Note: the generator itself fell behind; the machine is busy, and every figure "
            "above is noisier for it."
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([report.step_json(step) for step in steps], f, indent=1)


if __name__ == "__main__":
    main()
