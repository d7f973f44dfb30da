"""``python -m demo_app.load``: open-loop load on the demo, both modes, a sweep of loads.

By default it starts the demo itself (uvicorn pinned to one CPU, this generator and its
``/ping`` probe on the others), measures what a request costs that server (``calibrate.py``),
then offers loads as shares of the loop's capacity, 30 % to 110 %, with Poisson arrivals. At
each load it runs each mode, switching it through ``POST /demo/mode``, and prints per route
what the client saw beside what stallwatch saw and what queueing theory predicts, then
whether the demo's claim holds (``verdict.py``). ``--url`` targets a demo already running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from . import report
from .arrivals import ARRIVALS
from .calibrate import Calibration, percent
from .openloop import ProbeProcess, run
from .progress import Progress
from .report import CACHE, ITEMS, PING, Step
from .server import PACKAGE, demo_command, free_port, split_cpus, started_demo
from .steps import Plan, Traffic, sweep
from .verdict import verdict

MODES = ("blocking", "executor")
DEFAULT_POOL = min(32, (os.cpu_count() or 1) + 4)
"""What ``run_in_executor(None, ...)`` gets: asyncio's default ``ThreadPoolExecutor`` size."""
DEFAULT_LOADS = "30,60,85,95,110"
ITEMS_RATE = 50.0
PROBE_RATE = 100.0
"""/ping per second: 400 samples in a 4 s step, so its p99 is the 4th slowest, not the 1st."""

T = TypeVar("T")


def listed(
    kind: Callable[[str], T], check: Callable[[T], bool], what: str
) -> Callable[[str], list[T]]:
    """An argparse type for a comma-separated list whose every item passes ``check``."""

    def parse(text: str) -> list[T]:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or not all(check(v) for v in values):
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return values

    return parse


def loads(text: str) -> list[float]:
    try:
        return percent(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {PACKAGE}.load",
        description="Open-loop load on the stallwatch demo: every mode at every load, as a "
        "share of the server's measured capacity, client latencies beside stallwatch's "
        "diagnosis and queueing theory's prediction.",
    )
    add = p.add_argument
    add(
        "--url",
        help="a running demo (default: start one, pinned to one CPU); serve it on the "
        "standard asyncio loop, whose poll stallwatch times exactly",
    )
    add(
        "--loads",
        type=loads,
        default=percent(DEFAULT_LOADS),
        help="offered loads in percent of the loop's calibrated capacity, comma-separated "
        f"(default {DEFAULT_LOADS})",
    )
    add(
        "--rates",
        type=listed(float, lambda v: v > 0, "rates must be positive numbers"),
        help="offered /cache/{key} requests per second instead of --loads, comma-separated",
    )
    add(
        "--arrivals",
        choices=ARRIVALS,
        default="poisson",
        help="how the load's requests arrive: poisson (default: independent users), uniform "
        "(evenly spaced, which hides queueing), bursts (clumps of 10 at once); the /ping "
        "probe is Poisson always",
    )
    add(
        "--modes",
        type=listed(str.strip, lambda v: v in MODES, "modes must be among " + ", ".join(MODES)),
        default=list(MODES),
        help="cache modes to run at each load (default blocking,executor)",
    )
    add(
        "--duration",
        type=float,
        default=4.0,
        help="seconds of load per mode and load (default %(default)s)",
    )
    add(
        "--items-rate",
        type=float,
        default=None,
        help="/items/{item_id} requests per second (default 50, thinned on a server so slow "
        "that it would take over 10%% of the loop)",
    )
    add(
        "--probe-rate",
        type=float,
        default=None,
        help="/ping requests per second, from a separate process (default 100, thinned likewise)",
    )
    add(
        "--connections",
        type=int,
        default=2000,
        help="client connection pool size (default %(default)s)",
    )
    add(
        "--executor-threads",
        type=listed(int, lambda v: v >= 1, "pool sizes must be positive integers"),
        default=[1, DEFAULT_POOL],
        help="executor pool sizes of the demos this starts, comma-separated; the first runs "
        f"every mode, the others executor mode only (default 1,{DEFAULT_POOL}: one thread, "
        "then asyncio's default pool size on this machine)",
    )
    add(
        "--seed-rows",
        type=int,
        default=None,
        help="rows of the demo this starts, i.e. the read cost (default: the demo's)",
    )
    add(
        "--loop",
        choices=("asyncio", "uvloop", "auto"),
        default="asyncio",
        help="event loop of the demo this starts (default %(default)s)",
    )
    add("--seed", type=int, default=1, help="seed of the arrival schedules (default 1)")
    add("--json", metavar="PATH", help="also write the raw figures as JSON here")
    return p


def describe(
    args: argparse.Namespace,
    traffic: Traffic,
    started: bool,
    server_cpus: set[int] | None,
    own_cpus: set[int] | None,
) -> str:
    where = (
        f"the demo started by the generator (python -m {PACKAGE} --loop {args.loop}"
        + (f" --seed-rows {args.seed_rows}" if args.seed_rows else "")
        + ")"
        + (f", pinned to CPU {min(server_cpus)}" if server_cpus else " (not pinned)")
        if started
        else f"the demo at {args.url} (already running)"
    )
    gen = f"CPU {','.join(map(str, sorted(own_cpus)))}" if own_cpus else "unpinned"
    return (
        f"Server: {where}. Generator: {gen}. {args.duration:g} s per step.\n"
        f"Open loop, {traffic.arrivals} arrivals: {CACHE} at the offered rate, {ITEMS} at "
        f"{traffic.items_rate:.0f}/s, {PING} at {traffic.probe_rate:.0f}/s (Poisson) from a "
        "separate probe process."
    )


def calibration_text(calibration: Calibration, info: dict[str, Any], steps: Sequence[Step]) -> str:
    read = float(info.get("read_seconds") or 0.0)
    rates = dict.fromkeys((s.utilization, s.rate) for s in steps)
    loads = ", ".join(f"{u:.0%} = {r:.0f}/s" for u, r in rates)
    shared = (
        f" The server got only {calibration.cpu_share:.0%} of a CPU while calibrating: other "
        "work shares this machine, and while it does the real loads are higher than these."
        if calibration.cpu_share < 0.9
        else ""
    )
    return (
        f"Calibration (blocking mode): a cache request holds the loop for "
        f"{calibration.cache_cost * 1e3:.2f} ms (its SQLite read alone took {read * 1e3:.2f} ms "
        f"at start-up); the steady traffic and the idle server take {calibration.base:.1%} of "
        f"it ({calibration.source}); a full loop is {calibration.capacity:.0f} cache req/s."
        f"{shared}\nLoads: {loads}."
    )


def plans(args: argparse.Namespace, started: bool) -> list[Plan]:
    """One demo per pool size when the generator starts them: the first runs every mode, the
    others only executor mode (a pool size changes nothing in blocking mode)."""
    if not started:
        return [Plan(args.modes, None, args.loads, args.rates, args.duration)]
    out = []
    for i, threads in enumerate(args.executor_threads):
        modes = list(args.modes) if i == 0 else [m for m in args.modes if m == "executor"]
        if modes:
            out.append(Plan(modes, threads, args.loads, args.rates, args.duration))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Stopped with SIGTERM (timeout, a CI runner): unwind, so the demos it started stop too.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = args.url is None
    server_cpus, own_cpus = split_cpus() if started else (None, None)
    if own_cpus:
        os.sched_setaffinity(0, own_cpus)
    traffic = Traffic(
        args.arrivals,
        ITEMS_RATE if args.items_rate is None else args.items_rate,
        PROBE_RATE if args.probe_rate is None else args.probe_rate,
        args.seed,
        args.connections,
        thin=args.items_rate is None and args.probe_rate is None,
    )
    todo = plans(args, started)
    per_demo = len(args.rates or args.loads)
    progress = Progress(sum(len(plan.modes) for plan in todo) * per_demo)
    steps: list[Step] = []
    banners: list[str] = []
    calibration: Calibration | None = None
    calibrated: tuple[Calibration, Traffic] | None = None
    info: dict[str, Any] = {}
    probe = ProbeProcess(cpus=own_cpus, connections=max(64, args.connections // 4))
    try:
        for plan in todo:
            with contextlib.ExitStack() as stack:
                log = stack.enter_context(tempfile.TemporaryFile())
                proc = None
                if started:
                    assert plan.threads is not None
                    port = free_port()
                    command = demo_command(
                        port, "blocking", args.loop, plan.threads, args.seed_rows
                    )
                    proc = stack.enter_context(started_demo(command, server_cpus, own_cpus, log))
                    base = f"http://127.0.0.1:{port}"
                else:
                    base = args.url.rstrip("/")
                try:
                    calibration, traffic, seen, done = run(
                        sweep(base, proc, plan, traffic, calibrated, probe, progress)
                    )
                    calibrated = calibration, traffic
                except BaseException:
                    if started:
                        log.seek(0)
                        sys.stderr.write(log.read().decode(errors="replace")[-5000:])
                    raise
                info = info or seen
                steps += done
                log.seek(0)
                banners += [
                    line
                    for line in log.read().decode(errors="replace").splitlines()
                    if line.startswith("stallwatch demo:")
                ]
    finally:
        probe.close()
    print()
    print(describe(args, traffic, started, server_cpus, own_cpus))
    for line in banners:
        print(line)
    if calibration is not None:
        print(calibration_text(calibration, info, steps))
    print()
    print(report.table(steps))
    print()
    print(report.LEGEND)
    print()
    print(verdict(steps))
    print(generator_lag(steps))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([report.step_json(step) for step in steps], f, indent=1)
    return 0


def generator_lag(steps: Sequence[Step]) -> str:
    results = [r for s in steps for r in s.client]
    send_lag = max((r.send_lag for r in results), default=0.0)
    sent = sum(r.sent for r in results)
    mean_lag = sum(r.send_lag_total for r in results) / sent if sent else 0.0
    text = (
        f"Requests left the generator {mean_lag * 1e3:.2f} ms after their due time on average "
        f"and {send_lag * 1e3:.0f} ms at worst (timer slack, and any moment the generator's CPU "
        "was taken); that wait is counted in the latencies above."
    )
    if send_lag > 0.050:
        text += (
            "\nNote: the generator itself fell behind; the machine is busy, and every figure "
            "above is noisier for it."
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
