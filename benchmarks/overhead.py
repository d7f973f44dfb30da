"""What stallwatch costs a real server under wrk, next to its peers: the overhead matrix.

Axes (``benchmarks/_matrix.py``): Starlette and FastAPI; plain ``uvicorn`` (asyncio loop, h11)
and ``uvicorn[standard]`` (uvloop, httptools); 1, 50 and 256 wrk connections; with and without
a pass-through ``BaseHTTPMiddleware`` in the app; a handler that does no work (``/``) and one
that does about 200 us of Python work (``/work``). Variants (``benchmarks/apps.py``): bare,
``monitor`` (``LoopMonitor`` alone, no middleware), ``stallwatch`` (middleware, everything on),
and the peers fastapi-loopguard (log mode, Prometheus on), prometheus-fastapi-instrumentator
and starlette-exporter.

Servers that differ only on wrk's side (connections, handler) are one set: for each set the
driver starts one uvicorn per variant, all pinned to one core, and runs wrk pinned to the
other. Each round measures every cell of the set for every variant, the variants of a cell
back to back in an order rotated each round, so drift of a shared machine hits them alike;
every figure is taken against bare of the same round (``_matrix.figures``).

    flock /tmp/stallwatch-bench.lock python -m benchmarks.overhead            # ~22 min
    flock /tmp/stallwatch-bench.lock python -m benchmarks.overhead --quick    # ~2 min
    python -m benchmarks.overhead --cells 'fastapi/standard/50/*/ping' --rounds 4 --duration 5

Per cell and variant: req/s and its ratio to bare, added microseconds per request
(``1e6/rps - 1e6/rps_bare``), p50/p99/p99.9 latency and their ratios to bare, and the
server's CPU time per request (all its threads, ``/proc/<pid>/task/*/schedstat``), which moves
less than req/s when another process takes the server's core.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict
from itertools import groupby
from pathlib import Path

from benchmarks._common import loadavg, machine, print_machine
from benchmarks._matrix import (
    PEERS,
    Cell,
    Figures,
    Run,
    all_cells,
    detail_table,
    figures,
    select_cells,
    summary_table,
)
from benchmarks._servers import (
    Server,
    get_text,
    package_at,
    rev_name,
    serve,
    wrk,
    wrk_script,
)
from benchmarks.apps import PROTOTYPES, TRACED

VARIANTS = ("bare", "monitor", "stallwatch", *PEERS)
OPTIONAL_VARIANTS = ("noop", "timer", *PROTOTYPES, *TRACED)
QUICK_CELLS = (
    "fastapi/standard/50/nobhm/ping",
    "fastapi/standard/50/bhm/work",
    "starlette/plain/32/nobhm/ping",
    "fastapi/plain/256/nobhm/ping",
)


def stallwatch_counts(server: Server) -> tuple[float, float]:
    """Requests stallwatch recorded and stalls it saw: proof it measured, and how much."""
    requests = stalls = 0.0
    for line in get_text(server.url + "/metrics").splitlines():
        name = line.split("{", 1)[0]
        if name == "stallwatch_http_request_duration_seconds_count":
            requests += float(line.rsplit(" ", 1)[1])
        elif name == "stallwatch_event_loop_stalls_total":
            stalls += float(line.rsplit(" ", 1)[1])
    return requests, stalls


def measure(
    cells: Sequence[Cell],
    variants: Sequence[str],
    *,
    rounds: int,
    duration: int,
    warmup: int,
    server_cpu: str | None,
    wrk_cpu: str | None,
    at: str | None = None,
) -> tuple[dict[str, dict[str, list[Run]]], dict[str, object]]:
    runs: dict[str, dict[str, list[Run]]] = {c.key: {v: [] for v in variants} for c in cells}
    notes: dict[str, object] = {"probes": {}, "stallwatch": {}, "logs": {}, "loadavg": []}
    with tempfile.TemporaryDirectory(prefix="stallwatch-bench-") as tmp:
        logs = Path(tmp)
        package = {"BENCH_PACKAGE_DIR": str(package_at(at, logs))} if at else {}
        with wrk_script(logs) as script:
            for group, members in groupby(cells, key=lambda c: c.group):
                group_cells = list(members)
                flavour, framework, middleware = group
                with ExitStack() as stack:
                    servers: dict[str, Server] = {}
                    for variant in variants:
                        env = {
                            "BENCH_FRAMEWORK": framework,
                            "BENCH_VARIANT": variant,
                            "BENCH_BHM": "1" if middleware == "bhm" else "0",
                            **package,
                        }
                        if variant == "sw-pure":  # chosen when stallwatch is imported
                            env["STALLWATCH_PURE"] = "1"
                        label = f"{framework}/{flavour}/{middleware}/{variant}"
                        servers[variant] = stack.enter_context(
                            serve(label, flavour, env, server_cpu, logs)
                        )
                        probes = notes["probes"]
                        assert isinstance(probes, dict)
                        probes[label] = [servers[variant].loop, servers[variant].probe]
                    if flavour == "standard" and any(s.loop != "uvloop" for s in servers.values()):
                        raise RuntimeError(f"{group}: a server is not running uvloop")
                    for server in servers.values():
                        for path in {c.path for c in group_cells}:
                            wrk(server.url + path, seconds=warmup, connections=50,
                                cpu=wrk_cpu, script=script)  # fmt: skip
                    for round_no in range(rounds):
                        for index, cell in enumerate(group_cells):
                            shift = (round_no + index) % len(variants)
                            order = list(variants[shift:]) + list(variants[:shift])
                            for variant in order:
                                server = servers[variant]
                                cpu = server.cpu_seconds()
                                load = wrk(
                                    server.url + cell.path,
                                    seconds=duration,
                                    connections=cell.connections,
                                    cpu=wrk_cpu,
                                    script=script,
                                )
                                used = (server.cpu_seconds() - cpu) / max(load.requests, 1)
                                runs[cell.key][variant].append(Run(round_no, load, used * 1e6))
                        average = loadavg()
                        history = notes["loadavg"]
                        assert isinstance(history, list)
                        history.append(average)
                        print(
                            f"{'/'.join(group)} round {round_no + 1}/{rounds} done "
                            f"(loadavg {average})",
                            flush=True,
                        )
                    for variant, server in servers.items():
                        if variant.startswith(("stallwatch", "sw-")):
                            counts = notes["stallwatch"]
                            assert isinstance(counts, dict)
                            counts[server.label] = stallwatch_counts(server)
                        lines = server.log_lines()
                        if lines:
                            logged = notes["logs"]
                            assert isinstance(logged, dict)
                            logged[server.label] = [*lines[:5], f"... {len(lines)} lines"]
    return runs, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    quick = f"smoke run: 1 round x 3 s, cells {', '.join(QUICK_CELLS)}"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--cells", default="",
                        help="comma-separated patterns framework/flavour/connections/"
                        "bhm|nobhm/ping|work, '*' allowed (default: the whole matrix)")  # fmt: skip
    also = f"default {','.join(VARIANTS)}; also {','.join(OPTIONAL_VARIANTS)}"
    parser.add_argument("--variants", default=",".join(VARIANTS), help=also)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (2)")
    parser.add_argument("--duration", type=int, default=2, help="seconds per wrk run (2)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per route (1)")
    parser.add_argument("--server-cpu", default="0", help="core for the servers (0)")
    parser.add_argument("--wrk-cpu", default="1", help="core for wrk (1)")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    at = "serve stallwatch as committed at REV (git archive), not the working tree"
    parser.add_argument("--at", metavar="REV", help=at)
    parser.add_argument("--json", type=Path, help="write the raw runs and figures here")
    parser.add_argument("--markdown", type=Path, help="write the tables here, ready for docs")
    args = parser.parse_args(argv)

    if args.quick:
        args.rounds, args.duration = 1, 3
        args.cells = args.cells or ",".join(QUICK_CELLS)
    try:
        cells = select_cells(args.cells.split(",")) if args.cells else all_cells()
    except ValueError as error:
        parser.error(str(error))
    variants = [v for v in args.variants.split(",") if v]
    for name in variants:
        if name not in VARIANTS + OPTIONAL_VARIANTS:
            parser.error(f"unknown variant {name!r}; choose from {VARIANTS + OPTIONAL_VARIANTS}")
    if "bare" not in variants:
        variants.insert(0, "bare")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    cells = sorted(cells, key=lambda c: (c.group, c.handler, c.connections))
    pin = not args.no_pin and shutil.which("taskset") is not None
    server_cpu = args.server_cpu if pin else None
    wrk_cpu = args.wrk_cpu if pin else None

    print_machine("stallwatch overhead matrix")
    given = argv if argv is not None else sys.argv[1:]
    command = f"python -m benchmarks.overhead {' '.join(given)}".strip()
    print(f"command: {command}")
    if args.at:
        print(f"stallwatch served as committed at {args.at} ({rev_name(args.at)})")
    print(
        f"setup: {len(cells)} cells x {len(variants)} variants, {args.rounds} rounds x "
        f"{args.duration} s, warm-up {args.warmup} s per route, wrk -t1, "
        f"servers on cpu {server_cpu}, wrk on cpu {wrk_cpu}",
        flush=True,
    )
    before, started = loadavg(), time.monotonic()
    runs, notes = measure(
        cells,
        variants,
        rounds=args.rounds,
        duration=args.duration,
        warmup=args.warmup,
        server_cpu=server_cpu,
        wrk_cpu=wrk_cpu,
        at=args.at,
    )
    after, took = loadavg(), time.monotonic() - started
    tables: dict[str, dict[str, Figures]] = {
        key: {v: figures(r, per["bare"]) for v, r in per.items() if r} for key, per in runs.items()
    }
    probes_by_label = notes["probes"]
    assert isinstance(probes_by_label, dict)
    lines = [
        f"`{command}`: {len(cells)} cells, {args.rounds} rounds x {args.duration} s, "
        f"{took / 60:.1f} min; loadavg before {before}, after {after}",
        "",
        *summary_table(cells, tables),
        "",
    ]
    for cell in cells:
        probes = {
            label.rsplit("/", 1)[1]: str(p[1])
            for label, p in probes_by_label.items()
            if label.startswith(f"{cell.framework}/{cell.flavour}/{cell.middleware}/")
        }
        lines += detail_table(cell, tables[cell.key], probes)
    text = "\n".join(lines)
    print("\n" + text)
    for label, (requests, stalls) in dict(notes["stallwatch"]).items():  # type: ignore[call-overload]
        print(f"{label}: stallwatch recorded {requests:,.0f} requests and {stalls:g} stalls")
    for label, logged in dict(notes["logs"]).items():  # type: ignore[call-overload]
        print(f"{label} logged:\n    " + "\n    ".join(logged))
    print(f"\nloadavg before: {before}\nloadavg after:  {after}\ntook {took / 60:.1f} min")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        raw = {
            "command": command,
            "machine": machine(),
            "loadavg": {"before": before, "after": after, "rounds": notes["loadavg"]},
            "runs": {
                key: {v: [asdict(r) for r in rs] for v, rs in per.items()}
                for key, per in runs.items()
            },
            "figures": {key: {v: asdict(f) for v, f in per.items()} for key, per in tables.items()},
            "notes": notes,
        }
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
