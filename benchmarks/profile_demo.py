"""The loop profile against the demo: does it name the read, and does its time add up?

Issue 17's measurement. The demo (``python -m demo_app``) serves ``/cache/{key}``, whose
synchronous SQLite read (``read_blocking`` in ``demo_app/cache.py``) holds the loop. Open-loop
Poisson load (``demo_app.openloop``) offers cache reads at ``--load`` of the loop (30 %: the
rate is the load over the read's step as stallwatch timed it in a first ``--calibrate``
seconds of load) plus ``/ping`` at 50/s, for ``--duration`` seconds in blocking mode; then
the demo is switched to executor mode and loaded the same way. After each phase it reads
``/_stallwatch/api/profile`` and says:

- blocking: the share of ``/cache/{key}``'s samples filed under ``read_blocking`` (claim:
  at least 90 %), and the read's loop ms/s beside reads/s x the read's time (claim: within
  15 %);
- executor: the read's line held the loop for how many ms/s (claim: gone, 0).

Beside the profile it prints, from stallwatch's exact step timing (no sampling), the route's
loop time around the read per request (FastAPI, uvicorn's send, stallwatch's own accounting),
a ``/ping`` request's for scale, and the read's share of the route: what the profile's share
should come to. ``--profile off`` serves the demo with ``profile=False`` (no profile samples),
so that runs at one ``--rate`` show what the sampling itself adds to the route's time.

    python -m benchmarks.profile_demo                  # 5 + 60 + 40 s of load, about 2 minutes
    python -m benchmarks.profile_demo --duration 20    # a quick look
    python -m benchmarks.profile_demo --duration 30 --executor-duration 0 --rate 45 --profile off
    python -m benchmarks.profile_demo --pin             # the server alone on one core
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from demo_app import arrivals, scrape
from demo_app.openloop import RouteLoad, constant, offer, session
from demo_app.server import demo_command, free_port, started_demo, wait_ready

CACHE = "/cache/{key}"
LIBRARY_ONLY = "(library code only)"
HOLD = "stallwatch_route_loop_hold_seconds"


async def metrics(client: aiohttp.ClientSession, base: str) -> scrape.Samples:
    async with client.get(base + "/metrics") as r:
        return scrape.parse(await r.text())


def short(frame: str) -> str:
    """``asyncio/selector_events.py:1057 in write`` for a frame's full path."""
    return "/".join(frame.split("/")[-2:])


def read_line(view: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The cache route and, in any route, the line in ``read_blocking``."""
    route = next((r for r in view["routes"] if r["route"] == CACHE), None)
    for candidate in view["routes"]:
        for line in candidate["lines"]:
            if line.get("function") == "read_blocking" and str(line.get("file")).endswith(
                "cache.py"
            ):
                return route, line
    return route, None


async def phase(
    client: aiohttp.ClientSession,
    base: str,
    rate: float,
    duration: float,
    seed: int,
    ping: float = 50.0,
) -> tuple[float, int]:
    """Offer the load; returns (seconds it took, cache requests answered)."""
    rng = random.Random(seed)
    loads = [
        RouteLoad(
            CACHE, lambda i: f"/cache/key-{i % 1000}", rate, arrivals.poisson(rate, duration, rng)
        ),
    ]
    if ping > 0:
        loads.append(
            RouteLoad("/ping", constant("/ping"), ping, arrivals.poisson(ping, duration, rng))
        )
    began = time.monotonic()
    results = await offer(client, base, loads, start=began + 0.2, duration=duration, drain=5.0)
    return time.monotonic() - began, results[0].ok


async def profile(client: aiohttp.ClientSession, base: str, window: float) -> dict[str, Any]:
    async with client.get(f"{base}/_stallwatch/api/profile", params={"window": window}) as r:
        data: dict[str, Any] = await r.json()
        return data


def serve_timed(times: str, profile: bool, argv: list[str]) -> None:
    """The demo, with every call of ``read_blocking`` timed around the call (perf_counter) and
    the totals written to ``times`` twice a second: the read's real time in the run.
    ``profile=False``: stallwatch watches the loop as usual but takes no profile samples (the
    observer-effect control)."""
    import functools

    import demo_app.app
    from demo_app.__main__ import main as demo

    if not profile:
        # As create_app looks it up when it builds the app: the same options, profile off.
        from stallwatch import StallwatchMiddleware

        unprofiled = functools.partial(StallwatchMiddleware, profile=False)
        setattr(demo_app.app, "StallwatchMiddleware", unprofiled)  # noqa: B010

    read: Callable[[Any, str], str | None] = getattr(demo_app.app, "read_blocking")  # noqa: B009
    total = [0, 0.0]

    def timed(cache: Any, key: str) -> str | None:
        began = time.perf_counter()
        try:
            return read(cache, key)
        finally:
            total[0] += 1
            total[1] += time.perf_counter() - began

    def write() -> None:
        while True:
            with open(times + ".tmp", "w") as f:
                json.dump({"reads": total[0], "seconds": total[1]}, f)
            os.replace(times + ".tmp", times)
            time.sleep(0.5)

    setattr(demo_app.app, "read_blocking", timed)  # noqa: B010 - as the route looks it up
    threading.Thread(target=write, daemon=True).start()
    demo(argv)


async def read_times(path: str) -> tuple[int, float]:
    await asyncio.sleep(0.6)  # the server writes them twice a second
    data = json.loads(await asyncio.to_thread(Path(path).read_text))
    return int(data["reads"]), float(data["seconds"])


async def main(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    times = tempfile.mktemp(prefix="profile-demo-", suffix=".json")
    profiled = args.profile == "on"
    command = [sys.executable, "-m", "benchmarks.profile_demo", "serve", times, args.profile]
    command += demo_command(port, "blocking", args.loop, 1, None)[3:]  # the demo's own flags
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) >= 2:
        # Unpinned, a response's send can wake the load generator on the server's own core,
        # and the route pays for the switch (docs/profile.md: 0.59 ms of send per request).
        command = ["taskset", "-c", str(cores[0]), *command]
        os.sched_setaffinity(0, cores[1:])
    out: dict[str, Any] = {
        "load": args.load,
        "duration": args.duration,
        "loop": args.loop,
        "profile": profiled,
        "pinned": bool(args.pin and len(cores) >= 2),
    }
    with tempfile.TemporaryFile() as log, started_demo(command, None, None, log) as proc:
        async with session(256) as client:
            await wait_ready(client, base, proc)
            async with client.get(base + "/demo/info") as r:
                info = await r.json()
            read = float(info["read_seconds"])
            # The read at start-up is not the read under load on a shared machine: offer the
            # nominal rate for a few seconds, and take the rate from the read's step then
            # (--rate: that rate, for runs to compare at the same load).
            before = await metrics(client, base)
            nominal = args.rate or args.load / read
            took, _ = await phase(client, base, nominal, args.calibrate, 0, args.ping)
            grown = scrape.delta(before, await metrics(client, base))
            step = scrape.histogram(grown, HOLD, route=CACHE).mean()
            rate = args.rate or args.load / step
            print(
                f"read {read * 1e3:.2f} ms at start-up, its step {step * 1e3:.2f} ms under load: "
                f"{rate:.1f} reads/s is {rate * step:.0%} of the loop"
            )
            before = await metrics(client, base)
            reads_before = await read_times(times)
            took, answered = await phase(client, base, rate, args.duration, 1, args.ping)
            reads_after = await read_times(times)
            grown = scrape.delta(before, await metrics(client, base))
            timed = (reads_after[1] - reads_before[1]) / max(1, reads_after[0] - reads_before[0])
            # Whole buckets (10 s) inside the phase: the window never reaches back before it.
            view = (
                await profile(client, base, max(10.0, args.duration - 10.0))
                if profiled
                else {"routes": [], "covered": 0.0, "samples": 0}
            )
            route, line = read_line(view)
            reads_per_s = answered / took
            # The read's time in the run, from stallwatch's exact step timing (an independent
            # clock: perf_counter around each step, no sampling): the longest step of a cache
            # request is the one that reads, plus the handler's own microseconds.
            hold = scrape.histogram(grown, HOLD, route=CACHE).mean()
            busy = sum(v for _, v in scrape.select(grown, scrape.BUSY, route=CACHE)) / took
            expected = reads_per_s * timed * 1e3
            # The route's loop time around the read, per request: FastAPI's routing and
            # serialization, uvicorn's send, stallwatch's own step accounting.
            around = (busy * 1e3 - expected) / reads_per_s if reads_per_s else 0.0
            # The whole of a trivial route's request, for scale (/ping at 50/s).
            pinged = scrape.histogram(grown, HOLD, route="/ping").count
            ping = sum(v for _, v in scrape.select(grown, scrape.BUSY, route="/ping"))
            ping_ms = ping * 1e3 / pinged if pinged else 0.0
            share = line["samples"] / route["samples"] if route and line else 0.0
            # What the share should be: the read's part of the route's exact loop time.
            exact_share = expected / (busy * 1e3) if busy else 0.0
            library = next(
                (x for x in (route["lines"] if route else []) if x["location"] == LIBRARY_ONLY),
                None,
            )
            # Where the route's library-only samples were: the innermost frame of its kept
            # stacks (three at most, the rest unstacked).
            library_stacks = [
                (short(stack["frames"][-1]) if stack["frames"] else "?", stack["count"])
                for stack in (library["stacks"] if library else [])
            ] + ([("(not kept)", library["unstacked"])] if library else [])
            line_ms = float(line["ms_per_s"]) if line else 0.0
            route_ms = float(route["ms_per_s"]) if route else 0.0
            out["blocking"] = figures = {
                "read_ms_at_start": read * 1e3,
                "read_ms_in_run": timed * 1e3,
                "read_step_ms_in_run": hold * 1e3,
                "reads_per_s": reads_per_s,
                "window_covered": view["covered"],
                "samples": view["samples"],
                "route_samples": route["samples"] if route else 0,
                "read_share_of_route": share,
                "read_share_of_route_exact": exact_share,
                "read_ms_per_s": line_ms,
                "expected_ms_per_s": expected,
                "error": line_ms / expected - 1 if expected else None,
                "route_ms_per_s": route_ms,
                "route_busy_ms_per_s_exact": busy * 1e3,
                "around_the_read_ms_per_request": around,
                "ping_ms_per_request": ping_ms,
                "library_only_stacks": library_stacks,
                "hint": line.get("hint") if line else None,
                "route_lines": [(x["where"], round(x["share"], 3)) for x in route["lines"][:6]]
                if route
                else [],
            }
            print(
                f"blocking: {reads_per_s:.1f} reads/s x {timed * 1e3:.2f} ms (the read timed in "
                f"the run; its step {hold * 1e3:.2f} ms) = {expected:.1f} ms/s; {CACHE} "
                f"{busy * 1e3:.1f} ms/s by its steps' exact timing, {around:.3f} ms per "
                f"request around the read (a /ping request: {ping_ms:.3f} ms); the read is "
                f"{exact_share:.1%} of the route's loop time"
            )
            if profiled:
                print(
                    f"  profile: read_blocking {line_ms:.1f} ms/s ({figures['error']:+.1%}), "
                    f"{share:.1%} of {CACHE}'s {figures['route_samples']} samples; route "
                    f"{route_ms:.1f} ms/s; lines {figures['route_lines']}"
                )
                print(f"  (library code only), innermost frames: {library_stacks}")
            if args.executor_duration <= 0:
                return out
            async with client.post(base + "/demo/mode", json={"mode": "executor"}) as r:
                assert r.status == 200
            took, answered = await phase(client, base, rate, args.executor_duration, 2, args.ping)
            window = max(10.0, args.executor_duration - 15.0)
            view = await profile(client, base, window)
            route, line = read_line(view)
            out["executor"] = {
                "reads_per_s": answered / took,
                "window_covered": view["covered"],
                "read_ms_per_s": float(line["ms_per_s"]) if line else 0.0,
                "route_ms_per_s": float(route["ms_per_s"]) if route else 0.0,
                "route_lines": [(x["where"], round(x["share"], 3)) for x in route["lines"][:4]]
                if route
                else [],
            }
            print(
                f"executor: {answered / took:.1f} reads/s; read_blocking on the loop: "
                f"{out['executor']['read_ms_per_s']:.2f} ms/s over the last "
                f"{view['covered']:.0f} s; {CACHE}: {out['executor']['route_ms_per_s']:.1f} ms/s, "
                f"lines {out['executor']['route_lines']}"
            )
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--load", type=float, default=0.30, help="share of the loop the reads take")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of blocking-mode load")
    p.add_argument("--executor-duration", type=float, default=40.0, help="0: no executor phase")
    p.add_argument("--calibrate", type=float, default=5.0, help="seconds to time the read")
    p.add_argument("--rate", type=float, help="reads/s to offer instead of --load's")
    p.add_argument("--ping", type=float, default=50.0, help="/ping requests/s beside (0: none)")
    p.add_argument(
        "--profile",
        default="on",
        choices=("on", "off"),
        help="off: the demo's stallwatch without profile samples, to compare the route's time",
    )
    p.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"))
    p.add_argument("--json", help="also write the figures here")
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="server on the first core, this load generator on the others, as overhead.py "
        "does (docs/profile.md: the route's share is then the server's alone, but the "
        "watchdog shares the loop's core and misses moments)",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve_timed(sys.argv[2], sys.argv[3] == "on", sys.argv[4:])
        sys.exit(0)
    arguments = parse()
    figures = asyncio.run(main(arguments))
    if arguments.json:
        with open(arguments.json, "w") as f:
            json.dump(figures, f, indent=2)
    sys.exit(0)
