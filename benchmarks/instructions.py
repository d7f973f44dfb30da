"""What stallwatch costs per request, counted in machine instructions: the same on every run.

Timed figures of a 40 us request move by +-2 us from run to run on a shared VM, more than
most single changes to the request path are worth, and this machine's speed varies up to 3x
from day to day. Instructions executed do not: under valgrind (``callgrind``) the count per
request repeats within about 0.2 % (600 instructions of 270,000) from run to run, so a change
of 1 to 2 % of stallwatch's cost is seen, and compared across days. It is not time: a cache
miss or a syscall costs more than its count says, so the wrk matrix (``overhead.py``) stays
the judge of the targets; this is the tool for deciding what to cut, and for proving that a
change cut it.

The requests go through ``components.py``'s server path: real uvicorn (httptools, uvloop)
on a loopback socket, a closed-loop client on the same loop, 32 connections. Each variant
runs twice in a fresh process, with N and 2N requests after the same warm-up; the
difference over N is the count per request, start-up and warm-up taken out. Variants are
those of ``components.py``: ``bare``, ``noop``, ``timer`` (the least per-request loop timer
in Python, for reference), ``monitor``, ``steps``, ``spans``, ``stallwatch``.

Valgrind runs the program about 50 times slower, so every busy stretch is longer than the
1 ms floor (as under load, where they all are) and would be a stall too: the monitor's
clocks are set far apart here (heartbeat 10 s, stall threshold 60 s, stack samples 1 s,
profile 1 sample a second), so the count is of the request path, not of stall handling.

``--opcodes`` also counts, for the ``stallwatch`` variant, the Python opcodes each of
stallwatch's functions executes per request (``sys.settrace``; no valgrind needed): the
table that says where the instructions go.

    python -m benchmarks.instructions                      # about 8 minutes; needs valgrind
    python -m benchmarks.instructions --variants bare,stallwatch --opcodes
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
from types import FrameType
from typing import Any

from benchmarks._common import print_machine, run_on
from benchmarks.components import SERVER_VARIANTS, _load, _trial

VALGRIND_OPTIONS: dict[str, Any] = {
    "interval": 10.0,
    "stall_threshold": 60.0,
    "sample_interval": 1.0,
    "profile_rate": 1.0,
}
"""The monitor's clocks, set far apart so that valgrind's slowness is never a stall."""

WARMUP = 500
CONNECTIONS = 32


def _child(variant: str, requests: int) -> None:
    """One run of ``variant`` (in the process valgrind counts)."""
    run_on("uvloop", _trial(variant, "httptools", requests, WARMUP, CONNECTIONS, VALGRIND_OPTIONS))


def _count(variant: str, requests: int) -> int:
    """Instructions of a whole run of ``variant`` with ``requests`` requests after warm-up."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        variant,
        "--requests",
        str(requests),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dicts, the same probes, every run
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{variant}: valgrind run failed\n{done.stderr[-3000:]}")
    return int(found.group(1))


def per_request(variant: str, requests: int) -> float:
    """Instructions per request of ``variant``: (run of 2N - run of N) / N."""
    return (_count(variant, 2 * requests) - _count(variant, requests)) / requests


def opcodes(requests: int) -> tuple[dict[str, float], dict[str, float]]:
    """Python opcodes and calls per request of each function of stallwatch, in the
    ``stallwatch`` variant (``sys.settrace`` with opcode events, counted in the measured
    requests only)."""
    counts: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    counting = [False]

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        filename = frame.f_code.co_filename
        if f"{os.sep}stallwatch{os.sep}" not in filename:
            return None
        name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)  # 3.11+: with its class
        key = f"{filename.rsplit(os.sep + 'stallwatch' + os.sep, 1)[-1]}:{name}"
        if counting[0]:
            calls[key] += 1
        frame.f_trace_opcodes = True

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode" and counting[0]:
                counts[key] += 1
            return local

        return local

    import benchmarks.components as components

    async def counted_load(port: int, size: int, n: int, connections: int) -> Any:
        counting[0] = n == requests  # the measured run, not the warm-up
        try:
            return await _load(port, size, n, connections)
        finally:
            counting[0] = False

    components._load = counted_load  # type: ignore[assignment]
    sys.settrace(tracer)
    try:
        run_on(
            "uvloop",
            _trial("stallwatch", "httptools", requests, WARMUP, CONNECTIONS, VALGRIND_OPTIONS),
        )
    finally:
        sys.settrace(None)
        components._load = _load
    return (
        {key: n / requests for key, n in counts.items()},
        {key: n / requests for key, n in calls.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(SERVER_VARIANTS))
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--opcodes", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.requests)
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(SERVER_VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(SERVER_VARIANTS)}")
    print("# stallwatch: instructions per request (valgrind callgrind)")
    print_machine(" ".join(["python -m benchmarks.instructions", *sys.argv[1:]]))
    results: dict[str, float] = {}
    if variants:
        if shutil.which("valgrind") is None:
            raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
        for variant in variants:
            results[variant] = per_request(variant, args.requests)
            print(f"{variant}: {results[variant]:.0f} instructions/request", flush=True)
        bare = results.get("bare")
        print("\n| variant | instructions/request | over bare | bare / variant |")
        print("|---|---:|---:|---:|")
        for variant, count in results.items():
            over = f"{count - bare:+.0f}" if bare else ""
            ratio = f"{bare / count:.3f}" if bare else ""
            print(f"| {variant} | {count:.0f} | {over} | {ratio} |")
    if args.opcodes:
        ops, calls = opcodes(args.requests)
        print(
            f"\n## Python opcodes per request in stallwatch's functions: {sum(ops.values()):.0f}"
            f" in {sum(calls.values()):.1f} calls"
        )
        print("| function | opcodes | calls |")
        print("|---|---:|---:|")
        for key, n in sorted(ops.items(), key=lambda item: -item[1]):
            if n >= 1.0:
                print(f"| `{key}` | {n:.0f} | {calls.get(key, 0.0):.2f} |")


if __name__ == "__main__":
    main()
