"""The load generator's runs against one demo: warm-up, calibration, then one step per mode
and load, each read back from the demo's ``/metrics`` and ``/demo/stalls``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from . import report
from .arrivals import Arrivals, schedule
from .calibrate import Calibration, Run, Saturation, burst_size, fit, service_span, thinned
from .openloop import ProbeProcess, RouteLoad, RouteResult, control_session, offer, session
from .progress import Progress
from .report import CACHE, ITEMS, PING, Step
from .scrape import Samples, parse, server_view, stall_lines
from .server import wait_ready

CPU = "process_cpu_seconds_total"
BUSY = "stallwatch_route_loop_busy_seconds_total"
BURSTS = 3
"""Measured saturation bursts; the median one sets the service time."""


@dataclass(frozen=True)
class Traffic:
    """What every step offers besides the cache load, and how requests arrive."""

    arrivals: Arrivals
    items_rate: float
    probe_rate: float
    seed: int
    connections: int
    thin: bool = True
    """Thin the steady traffic on a slow server (not when its rates were asked for)."""


@dataclass(frozen=True)
class Target:
    """The demo under load and the three clients that talk to it."""

    base: str
    load: aiohttp.ClientSession
    control: aiohttp.ClientSession
    probe: ProbeProcess


async def get_text(client: aiohttp.ClientSession, url: str) -> str:
    async with client.get(url) as response:
        response.raise_for_status()
        return await response.text()


async def get_json(client: aiohttp.ClientSession, url: str) -> Any:
    return json.loads(await get_text(client, url))


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


def seed_for(traffic: Traffic, cache_rate: float, stream: int) -> int:
    """The same schedule for every mode at a load, so modes are compared on identical traffic."""
    return traffic.seed * 1_000_003 + round(cache_rate * 10) * 3 + stream


async def offer_traffic(
    target: Target,
    cache_rate: float,
    duration: float,
    traffic: Traffic,
    progress: Progress | None,
) -> list[RouteResult]:
    """One step's traffic: cache requests at ``cache_rate`` (none at 0), ``/items`` shaped by
    ``--arrivals`` like the cache load, and the ``/ping`` probe, always Poisson: Poisson
    arrivals see the server as it is on average (PASTA), which is what a probe must see."""
    start = time.monotonic() + 0.2
    drain = max(3.0, min(duration, 10.0))
    target.probe.start(
        target.base,
        PING,
        PING,
        traffic.probe_rate,
        schedule("poisson", traffic.probe_rate, duration, seed_for(traffic, cache_rate, 2)),
        start=start,
        duration=duration,
        drain=drain,
    )
    loads = []
    if cache_rate > 0:
        offsets = schedule(traffic.arrivals, cache_rate, duration, seed_for(traffic, cache_rate, 0))
        loads.append(
            RouteLoad(CACHE, lambda i: f"/cache/key-{(i * 7919) % 1000}", cache_rate, offsets)
        )
    offsets = schedule(
        traffic.arrivals, traffic.items_rate, duration, seed_for(traffic, cache_rate, 1)
    )
    loads.append(RouteLoad(ITEMS, lambda i: f"/items/{i % 1000}", traffic.items_rate, offsets))
    results = await offer(
        target.load,
        target.base,
        loads,
        start=start,
        duration=duration,
        drain=drain,
        progress=progress,
    )
    results.append(await target.probe.result())
    return results


def cpu_seconds(samples: Samples) -> tuple[float, str] | None:
    """The server's CPU seconds so far, and what they were read from."""
    cpu = samples.get((CPU, frozenset()))
    if cpu is not None:
        return cpu, "process CPU time"
    busy = [v for (name, _), v in samples.items() if name == BUSY]
    # Without the process collector (not Linux): the loop time stallwatch charged to routes,
    # which leaves out the server's own parsing, so loads come out a little lighter.
    return (sum(busy), "stallwatch's route busy seconds") if busy else None


async def server_cpu(target: Target) -> tuple[float, str]:
    found = cpu_seconds(parse(await get_text(target.control, target.base + "/metrics")))
    if found is None:
        raise SystemExit("the demo's /metrics has no CPU counter to calibrate with")
    return found


async def steady_run(target: Target, duration: float, traffic: Traffic) -> Run:
    """The steady traffic alone, and the server CPU it took."""
    await settle(target.control, target.base)
    before, _ = await server_cpu(target)
    began = time.monotonic()
    await offer_traffic(target, 0.0, duration, traffic, None)
    after, _ = await server_cpu(target)
    return Run(time.monotonic() - began, after - before)


async def burst(target: Target, size: int) -> float:
    """``size`` cache requests at once; seconds from the first answer to the last."""

    async def one(i: int) -> float:
        async with target.load.get(f"{target.base}/cache/key-{(i * 7919) % 1000}") as response:
            await response.read()
            if response.status != 200:
                raise SystemExit(f"calibration: /cache answered {response.status}")
        return time.monotonic()

    return service_span(await asyncio.gather(*(one(i) for i in range(size))))


async def calibrate(
    target: Target, info: dict[str, Any], traffic: Traffic, progress: Progress
) -> tuple[Calibration, Traffic]:
    """In blocking mode: the steady traffic alone, then bursts that saturate the loop."""
    await set_mode(target.control, target.base, "blocking")
    size = burst_size(float(info.get("read_seconds") or 0.0))
    progress.note(
        f"calibrating: 2 s of steady traffic, then {BURSTS} bursts of {size} cache requests "
        "(blocking mode)"
    )
    light = await steady_run(target, 2.0, traffic)
    await burst(target, size)  # opens the connections; not measured
    await settle(target.control, target.base)
    before, source = await server_cpu(target)
    spans = []
    for _ in range(BURSTS):
        spans.append(await burst(target, size))
    after, _ = await server_cpu(target)
    calibration = fit(light, Saturation(tuple(spans), size, after - before), source=source)
    items, probe = thinned(calibration.base, traffic.items_rate, traffic.probe_rate)
    if not traffic.thin or (items, probe) == (traffic.items_rate, traffic.probe_rate):
        return calibration, traffic
    # A slow server: the steady traffic alone would take much of the loop. Thin it, and
    # measure what it takes now.
    traffic = dataclasses.replace(traffic, items_rate=items, probe_rate=probe)
    progress.note(
        f"calibrating: the steady traffic took {calibration.base:.0%} of the loop; thinned to "
        f"/items at {items:.0f}/s and /ping at {probe:.0f}/s, measured again"
    )
    light = await steady_run(target, 2.0, traffic)
    return dataclasses.replace(calibration, base=min(light.busy, 0.95)), traffic


async def run_step(
    target: Target,
    mode: str,
    threads: int | None,
    rate: float,
    calibration: Calibration,
    duration: float,
    traffic: Traffic,
    progress: Progress | None,
) -> Step:
    base, control = target.base, target.control
    await settle(control, base)
    await set_mode(control, base, mode)
    before = parse(await get_text(control, base + "/metrics"))
    since = time.time()
    load = calibration.utilization(rate)
    if progress is not None:
        label = report.mode_label(mode, threads)
        progress.begin(f"{label} at {load:.0%} ({rate:.0f} cache req/s)", duration)
    client = await offer_traffic(target, rate, duration, traffic, progress)
    after = parse(await get_text(control, base + "/metrics"))
    events = await get_json(control, base + "/demo/stalls")
    step = Step(
        mode=mode,
        threads=threads,
        rate=rate,
        utilization=load,
        service=calibration.cache_cost,
        arrivals=traffic.arrivals,
        duration=duration,
        client=client,
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


@dataclass(frozen=True)
class Plan:
    """What to run against one demo."""

    modes: Sequence[str]
    threads: int | None
    loads: Sequence[float]
    """Target utilizations, used unless ``rates`` is given."""
    rates: Sequence[float] | None
    duration: float


async def sweep(
    base: str,
    proc: subprocess.Popen[bytes] | None,
    plan: Plan,
    traffic: Traffic,
    calibrated: tuple[Calibration, Traffic] | None,
    probe: ProbeProcess,
    progress: Progress,
) -> tuple[Calibration, Traffic, dict[str, Any], list[Step]]:
    """Every mode at every load against one demo, after a warm-up in each mode, calibrating
    first unless an earlier demo on this machine already did (then its figures and its
    steady traffic are kept, so every demo sees the same loads)."""
    async with session(traffic.connections) as load, control_session() as control:
        await wait_ready(control, base, proc)
        info: dict[str, Any] = await get_json(control, base + "/demo/info")
        target = Target(base, load, control, probe)
        # Warm up connections, the pool's threads and their SQLite connections, and FastAPI's
        # first requests. Not reported.
        for mode in dict.fromkeys(["blocking", *plan.modes]):
            await set_mode(control, base, mode)
            await offer_traffic(target, 20.0, 1.0, traffic, None)
        calibration, traffic = calibrated or await calibrate(target, info, traffic, progress)
        if plan.rates:
            rates = list(plan.rates)
        else:
            rates = [calibration.rate(u) for u in plan.loads if u > calibration.base]
            skipped = [u for u in plan.loads if u <= calibration.base]
            if skipped:
                progress.note(
                    f"skipped loads {', '.join(f'{u:.0%}' for u in skipped)}: the steady "
                    f"traffic alone takes {calibration.base:.0%} of the loop"
                )
        threads = plan.threads or info.get("executor_threads")
        steps = [
            await run_step(
                target, mode, threads, rate, calibration, plan.duration, traffic, progress
            )
            for rate in rates
            for mode in plan.modes
        ]
        return calibration, traffic, info, steps
