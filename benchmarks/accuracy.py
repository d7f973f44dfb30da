"""How exactly stallwatch and its peers report a block of the event loop, against the block itself.

A real uvicorn serves ``tests/apps/proof_accuracy.py``, with stallwatch, fastapi-loopguard,
asyncio's debug mode and aiodebug all watching the same loop, under concurrent traffic to
``/ping``. The client asks ``/block/{kind}?ms=N`` to block the loop, in six ways and at seven
sizes, many times each, on the standard loop and on uvloop. Each block is timed around the
blocking statement (``perf_counter``); each tool's report is held to that:

- stallwatch: the stall event that covers the block (``recent_stalls()``): its duration, its
  culprit route (right: ``/block/{kind}``), its top frame (right: the blocking line; for a C call
  that keeps the GIL or a gc pause, no frame rather than a wrong one) and its cause
  (``blocking`` for sleep, sqlite and cpu, ``gil``, ``gc``, ``starvation``).
- asyncio debug mode: the "Executing <Handle> took N seconds" record that covers the block.
- aiodebug: its slow-callback report that covers the block.
- fastapi-loopguard: the block route's own ``x-blocking-total-ms`` header (``dev_mode``).

    python -m benchmarks.accuracy            # the full run, about 12 minutes (3 reps)
    python -m benchmarks.accuracy --quick    # two kinds, two sizes, once: about 30 s

Run it under ``flock /tmp/stallwatch-bench.lock`` on a shared machine. Every tool gets the same
threshold (``--threshold``, 4 ms, so that 5 ms blocks can be seen at all); loopguard checks
every 2 ms, the finest it resolves below that threshold.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from benchmarks._common import loadavg, median, print_machine
from tests.servers import uvicorn

SIZES_MS = (5, 10, 20, 50, 100, 500, 2000)
KINDS = ("sleep", "sqlite", "cpu", "native", "gc", "starvation")
EXPECTED_CAUSE = {
    "sleep": "blocking",
    "sqlite": "blocking",
    "cpu": "blocking",
    "native": "gil",
    "gc": "gc",
    "starvation": "starvation",
}
FLAVOURS = {
    "asyncio": ("--loop", "asyncio", "--http", "h11"),
    "uvloop": ("--loop", "uvloop", "--http", "httptools"),
}
PEERS = ("asyncio_debug", "aiodebug", "loopguard")
CULPRIT = "/block/{kind}"
"""The route template of the blocking route: what the culprit must be."""


TOOLS = ("stallwatch", *PEERS)
NO_UVLOOP = {"aiodebug"}
"""aiodebug patches ``asyncio.events.Handle``; uvloop's handles are its own: nothing to see."""


@dataclass(frozen=True, slots=True)
class Trial:
    """One block on one tool's server, and what that tool reported about it."""

    tool: str
    loop: str
    kind: str
    target_ms: int
    seconds: float
    """The block, measured around the blocking statement."""
    duration: float | None
    """What the tool reported; None when it did not see the block."""
    culprit_right: bool = False
    top_frame_right: bool = False
    cause_right: bool = False
    cause: str | None = None
    names_line: bool = False


def judge(
    tool: str, loop: str, kind: str, target_ms: int, block: dict[str, Any],
    found: dict[str, Any], headers: httpx.Headers,
) -> Trial:  # fmt: skip
    """One block and what the tool reported about it, marked right or wrong."""
    line = block["line"]
    common: dict[str, Any] = {"tool": tool, "loop": loop, "kind": kind, "target_ms": target_ms}
    common["seconds"] = block["seconds"]
    if tool == "loopguard":
        detected = headers.get("x-blocking-detected") == "true"
        total = float(headers.get("x-blocking-total-ms", "0")) / 1e3
        return Trial(**common, duration=total if detected else None)
    if tool != "stallwatch":
        record = found.get(tool)
        if not record:
            return Trial(**common, duration=None)
        named = line.rsplit("/", 1)[-1] in record["text"]
        return Trial(**common, duration=record["duration"], names_line=named)
    event = found.get("stallwatch")
    if not event:
        return Trial(**common, duration=None)
    top = event["top_frame"]
    at = top.rsplit(" in ", 1)[0] if top else None
    # A C call that keeps the GIL leaves no moment to take a stack, and a collection pause is
    # nobody's code: for those, no frame is a right answer too.
    top_right = at == line or (kind in ("native", "gc") and at is None)
    return Trial(
        **common,
        duration=event["duration"],
        culprit_right=event["culprit"] == CULPRIT,
        top_frame_right=top_right,
        cause_right=event["cause"] == EXPECTED_CAUSE[kind],
        cause=event["cause"],
        names_line=at == line,
    )


@contextmanager
def traffic(bases: list[str], workers: int, stop_after: float) -> Iterator[list[int]]:
    """``workers`` clients per server calling ``/ping`` with a 2 ms pause, bounded in time."""
    stop = threading.Event()
    targets = [base for base in bases for _ in range(workers)]
    counts = [0] * len(targets)

    def run(slot: int) -> None:
        deadline = time.monotonic() + stop_after
        with httpx.Client(base_url=targets[slot], timeout=30.0) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    client.get("/ping")
                except httpx.HTTPError:  # a server held for long: traffic goes on after it
                    continue
                counts[slot] += 1
                time.sleep(0.002)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    try:
        yield counts
    finally:
        stop.set()
        for thread in threads:
            thread.join(30.0)


def one_block(client: httpx.Client, tool: str, loop: str, kind: str, target_ms: int) -> Trial:
    try:
        response = client.get(f"/block/{kind}", params={"ms": target_ms}, timeout=120.0)
    except httpx.TimeoutException:  # counted as not seen, and said: a run must not die of it
        print(f"  {tool} {loop} {kind} {target_ms} ms: no answer in 120 s", flush=True)
        return Trial(tool, loop, kind, target_ms, float("nan"), None)
    response.raise_for_status()
    block = response.json()
    window = {"start": block["start"], "end": block["end"]}
    deadline = time.monotonic() + (1.5 if tool == "stallwatch" else 0.0)
    while True:  # stallwatch's watchdog reports a stall just after it ends
        found: dict[str, Any] = client.get("/report", params=window).json()
        if tool in found or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return judge(tool, loop, kind, target_ms, block, found, response.headers)


def run_loop(loop: str, args: argparse.Namespace) -> list[Trial]:
    """Every block of the plan on every tool's server in turn, all servers under traffic."""
    tools = [t for t in args.tools if not (loop == "uvloop" and t in NO_UVLOOP)]
    plan = [(k, s) for k in args.kinds for s in args.sizes if k != "gc" or s <= args.gc_max_ms]
    trials: list[Trial] = []
    with ExitStack() as stack:
        bases: dict[str, str] = {}
        for tool in tools:
            env = {"ACC_THRESHOLD": str(args.threshold), "ACC_TOOL": tool}
            target = "tests.apps.proof_accuracy:app"
            bases[tool] = stack.enter_context(uvicorn(target, args=FLAVOURS[loop], env=env))
        clients = {
            tool: stack.enter_context(httpx.Client(base_url=base, timeout=60.0))
            for tool, base in bases.items()
        }
        time.sleep(2.0)  # loopguard calibrates its baseline in the background at start-up
        probe = clients[tools[0]].get("/report", params={"start": 0, "end": 0}).json()["probe"]
        print(f"{loop}: tools {', '.join(tools)}; stallwatch probe {probe}", flush=True)
        with traffic(list(bases.values()), args.workers, stop_after=3600) as counts:
            started = time.monotonic()
            for rep in range(args.reps):
                random.Random(rep).shuffle(plan)
                for kind, size in plan:
                    for tool in tools:
                        trials.append(one_block(clients[tool], tool, loop, kind, size))
                        time.sleep(0.1)
                print(f"  rep {rep + 1}/{args.reps} done, loadavg {loadavg()}", flush=True)
            rate = sum(counts) / (time.monotonic() - started)
        print(f"  traffic: {rate:.0f} /ping requests/s over {len(tools)} servers", flush=True)
    return trials


# -- the tables ------------------------------------------------------------------------------


def _pct(flags: list[bool]) -> str:
    return f"{100 * sum(flags) / len(flags):.0f}%" if flags else "-"


def _errors(trials: list[Trial]) -> tuple[str, str, str]:
    """(detected %, median |error| ms, worst |error| ms) over some blocks of one tool."""
    errors = [abs(t.duration - t.seconds) * 1e3 for t in trials if t.duration is not None]
    detected = _pct([t.duration is not None for t in trials])
    if not errors:
        return detected, "-", "-"
    return detected, f"{median(errors):.2f}", f"{max(errors):.2f}"


def cells(trials: list[Trial], tool: str) -> dict[tuple[str, str, int], list[Trial]]:
    grouped: dict[tuple[str, str, int], list[Trial]] = defaultdict(list)
    for t in trials:
        if t.tool == tool:
            grouped[(t.loop, t.kind, t.target_ms)].append(t)
    return dict(sorted(grouped.items(), key=lambda kv: (kv[0][0], KINDS.index(kv[0][1]), kv[0][2])))


def stallwatch_table(trials: list[Trial]) -> list[str]:
    lines = [
        "| loop | kind | block ms | n | measured ms (median) | detected | median error ms "
        "| worst error ms | culprit right | top frame right | cause right | causes seen |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (loop, kind, size), group in cells(trials, "stallwatch").items():
        detected, med, worst = _errors(group)
        causes = Counter(t.cause or "none" for t in group)
        seen = ", ".join(f"{c} {n}" for c, n in causes.most_common())
        measured = median([t.seconds for t in group]) * 1e3
        lines.append(
            f"| {loop} | {kind} | {size} | {len(group)} | {measured:.1f} | {detected} | {med} "
            f"| {worst} | {_pct([t.culprit_right for t in group])} "
            f"| {_pct([t.top_frame_right for t in group])} "
            f"| {_pct([t.cause_right for t in group])} | {seen} |"
        )
    return lines


def peers_table(trials: list[Trial]) -> list[str]:
    head = " | ".join(f"{p} detected | median err | worst err" for p in PEERS)
    lines = [f"| loop | kind | block ms | {head} |", "|---|---|---:|" + "---:|" * 3 * len(PEERS)]
    by_tool = {p: cells(trials, p) for p in PEERS}
    for key in cells(trials, "stallwatch"):
        parts: list[str] = []
        for peer in PEERS:
            group = by_tool[peer].get(key)
            parts.extend(_errors(group) if group else ("n/a", "", ""))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(parts) + " |")
    return lines


def summary(trials: list[Trial], threshold: float) -> list[str]:
    """Per loop and tool, over the blocks of at least twice the threshold: the headline."""
    lines = []
    for loop in sorted({t.loop for t in trials}):
        for tool in TOOLS:
            big = [t for t in trials if (t.loop, t.tool) == (loop, tool)]
            big = [t for t in big if t.seconds >= 2 * threshold]
            if not big:
                continue
            det, med, worst = _errors(big)
            line = f"{loop} {tool}: detected {det}, median error {med} ms, worst {worst} ms"
            if tool == "stallwatch":
                line += (
                    f", culprit right {_pct([t.culprit_right for t in big])}, top frame right "
                    f"{_pct([t.top_frame_right for t in big])}, cause right "
                    f"{_pct([t.cause_right for t in big])}"
                )
            lines.append(line + f", names the line {_pct([t.names_line for t in big])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="sleep and native, 10 and 100 ms, once"
    )
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--kinds", help=f"default: {','.join(KINDS)}")
    parser.add_argument("--sizes", help=f"block sizes, ms; default: {','.join(map(str, SIZES_MS))}")
    parser.add_argument("--reps", type=int, default=3, help="blocks of each kind and size")
    parser.add_argument("--gc-max-ms", type=int, default=500, help="larger gc pauses need GBs")
    parser.add_argument("--threshold", type=float, default=0.004, help="seconds, every tool")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--workers", type=int, default=1, help="/ping clients per server")
    parser.add_argument("--json", help="write every trial to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    args.kinds = args.kinds or ("sleep,native" if quick else ",".join(KINDS))
    args.sizes = args.sizes or ("10,100" if quick else ",".join(map(str, SIZES_MS)))
    args.reps = 1 if quick else args.reps
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.tools = [t for t in args.tools.split(",") if t]
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    print_machine("accuracy: stallwatch and its peers against the measured block")
    started = time.monotonic()
    trials = [t for loop in args.loops.split(",") for t in run_loop(loop, args)]
    print(f"loadavg after: {loadavg()}; {len(trials)} blocks in {time.monotonic() - started:.0f} s")
    print("\n## stallwatch\n")
    print("\n".join(stallwatch_table(trials)))
    print("\n## the peers, on the same blocks\n")
    print("\n".join(peers_table(trials)))
    print(f"\n## blocks of at least {2 * args.threshold * 1e3:.0f} ms\n")
    print("\n".join(summary(trials, args.threshold)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(t) for t in trials], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
