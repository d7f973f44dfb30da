"""What the loop profile costs: the sampler at its default rate on a loop busy half the time.

The loop alternates ``--busy`` ms of work with as long a sleep (50 % busy), for ``--seconds``,
under a ``LoopMonitor`` with ``profile=True`` (100 samples per busy second) and with
``profile=False``, in separate processes one after the other, ``--rounds`` times
interleaved. For each it reads:

- the watchdog thread's CPU time over the wall time (its own thread CPU clock): what the
  sampler adds to it is the profile's cost, in share of one core (budget: 1 %);
- the process's CPU time over the wall time;
- how long the loop took for its fixed work (the busy parts): a watchdog that takes the GIL
  from the loop thread shows here, since the work is pure Python that holds the GIL.

Two kinds of work: ``spin`` (pure Python, holds the GIL: the watchdog waits for the loop to
let it go) and ``sleep`` (``time.sleep``, lets the GIL go: the watchdog samples at once).

    python -m benchmarks.profile_cost                      # 3 rounds of 20 s, about 4 minutes
    python -m benchmarks.profile_cost --seconds 5 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from time import perf_counter, process_time
from typing import Any

from benchmarks._common import median, print_machine


def spin(seconds: float) -> None:
    end = perf_counter() + seconds
    while perf_counter() < end:
        pass


async def workload(seconds: float, busy: float, kind: str) -> float:
    """Half busy, half asleep, for ``seconds``; returns the seconds the busy parts took."""
    work = 0.0
    end = perf_counter() + seconds
    while perf_counter() < end:
        began = perf_counter()
        if kind == "spin":
            spin(busy)
        else:
            time.sleep(busy)  # noqa: ASYNC251 - the blocking call measured
        work += perf_counter() - began
        await asyncio.sleep(busy)
    return work


def watchdog_cpu() -> float:
    for thread in threading.enumerate():
        if thread.name.startswith("stallwatch-watchdog") and thread.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    raise RuntimeError("no watchdog thread")


async def measure(profile: bool, seconds: float, busy: float, kind: str) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from stallwatch import LoopMonitor

    async with LoopMonitor(registry=CollectorRegistry(), profile=profile) as monitor:
        await asyncio.sleep(0.5)  # the watchdog is running
        wall, cpu, dog = perf_counter(), process_time(), watchdog_cpu()
        work = await workload(seconds, busy, kind)
        wall, cpu, dog = perf_counter() - wall, process_time() - cpu, watchdog_cpu() - dog
        samples = monitor.profile.snapshot().samples if monitor.profile is not None else 0
    return {
        "profile": profile,
        "kind": kind,
        "wall": wall,
        "watchdog_cpu_share": dog / wall,
        "process_cpu_share": cpu / wall,
        "busy_share": work / wall,
        "samples_per_busy_second": samples / work if work else 0.0,
    }


def child(args: argparse.Namespace) -> None:
    result = asyncio.run(measure(args.profile == "on", args.seconds, args.busy / 1e3, args.kind))
    print(json.dumps(result))


def main(args: argparse.Namespace) -> dict[str, Any]:
    print_machine("profile_cost")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for _ in range(args.rounds):
        for kind in args.kinds.split(","):
            for mode in ("off", "on"):
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.profile_cost", "--child", mode,
                     "--kind", kind, "--seconds", str(args.seconds), "--busy", str(args.busy)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault(kind, {}).setdefault(mode, []).append(figures)
    summary: dict[str, Any] = {}
    for kind, modes in results.items():

        def med(mode: str, key: str, modes: dict[str, list[dict[str, Any]]] = modes) -> float:
            return median([r[key] for r in modes[mode]])

        row = {
            "busy_share": med("on", "busy_share"),
            "samples_per_busy_second": med("on", "samples_per_busy_second"),
            "watchdog_cpu_off": med("off", "watchdog_cpu_share"),
            "watchdog_cpu_on": med("on", "watchdog_cpu_share"),
            "process_cpu_off": med("off", "process_cpu_share"),
            "process_cpu_on": med("on", "process_cpu_share"),
        }
        row["cost"] = row["watchdog_cpu_on"] - row["watchdog_cpu_off"]
        summary[kind] = row
        print(
            f"{kind:>5}: loop busy {row['busy_share']:.0%}, "
            f"{row['samples_per_busy_second']:.0f} samples per busy second; watchdog thread "
            f"{row['watchdog_cpu_off']:.2%} -> {row['watchdog_cpu_on']:.2%} of a core "
            f"(the profile: {row['cost']:+.2%}); process {row['process_cpu_off']:.1%} -> "
            f"{row['process_cpu_on']:.1%}"
        )
    print_machine("profile_cost (after)")
    return summary


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--busy", type=float, default=5.0, help="ms of each busy part")
    p.add_argument("--kinds", default="spin,sleep")
    p.add_argument("--kind", default="spin", help=argparse.SUPPRESS)
    p.add_argument("--child", dest="profile", choices=("on", "off"), help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.profile:
        child(arguments)
    else:
        figures = main(arguments)
        if arguments.json:
            with open(arguments.json, "w") as f:
                json.dump(figures, f, indent=2)
