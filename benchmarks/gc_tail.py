"""Where the tail comes from: garbage collection with and without stallwatch, from inside.

Each variant's server runs with ``BENCH_GCSTATS=1`` (``benchmarks/apps.py``): a ``gc.callbacks``
hook counts collections per generation and times each one, and ``/_gc?objects=1`` counts the
objects the collector tracks, per generation and per type. Per variant, after a warm-up, the
driver reads both, runs wrk for ``--duration`` seconds, reads them again, and reports per
10,000 requests: collections of each generation, their mean and longest duration, the GC time,
the objects each generation's collections freed (cyclic garbage: what plain reference counting
could not free), and the tracked objects the process holds after the run (what every full
collection walks), with stallwatch's own types broken out.

Variants as in ``benchmarks/apps.py``: ``bare``, ``stallwatch``, and the prototypes that change
one thing from outside the package (``sw-release``, ``sw-gcfreeze``, ``sw-nogcwatch``,
``sw-floor20``). The figures are counts, not timings of stallwatch, so they
hold on a loaded machine; the GC durations do not, and the script prints the load average
beside them.

    flock /tmp/stallwatch-bench.lock python -m benchmarks.gc_tail            # ~2 min
    python -m benchmarks.gc_tail --at HEAD --framework fastapi --flavour standard
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import loadavg, print_machine
from benchmarks._servers import FLAVOURS, get_json, package_at, serve, wrk, wrk_script

DEFAULT_VARIANTS = ("bare", "stallwatch", "sw-release", "sw-nogcwatch", "sw-gcfreeze")


def one(
    variant: str,
    args: argparse.Namespace,
    logs: Path,
    script: Path,
    package: dict[str, str],
) -> dict[str, Any]:
    env = {
        "BENCH_FRAMEWORK": args.framework,
        "BENCH_VARIANT": variant,
        "BENCH_BHM": "1" if args.bhm else "0",
        "BENCH_GCSTATS": "1",
        **package,
    }
    label = f"{args.framework}/{args.flavour}/{variant}"
    with serve(label, args.flavour, env, args.server_cpu, logs) as server:
        url = server.url + ("/work" if args.handler == "work" else "/")
        wrk(url, seconds=args.warmup, connections=args.connections, cpu=args.wrk_cpu,
            script=script)  # fmt: skip
        before = get_json(server.url + "/_gc?objects=1", timeout=30.0)
        load = wrk(url, seconds=args.duration, connections=args.connections,
                   cpu=args.wrk_cpu, script=script)  # fmt: skip
        after = get_json(server.url + "/_gc?objects=1", timeout=30.0)
    per = 1e4 / max(load.requests, 1)
    gens: list[dict[str, float]] = []
    for g in range(3):
        count = int(after["count"][g]) - int(before["count"][g])  # type: ignore[index]
        seconds = float(after["seconds"][g]) - float(before["seconds"][g])  # type: ignore[index]
        freed = int(after["collected"][g]) - int(before["collected"][g])  # type: ignore[index]
        gens.append(
            {
                "per_10k": count * per,
                "mean_ms": seconds / count * 1e3 if count else 0.0,
                "longest_ms": float(after["longest"][g]) * 1e3,  # type: ignore[index]
                "ms_per_10k": seconds * 1e3 * per,
                "freed_per_10k": freed * per,
            }
        )
    return {
        "variant": variant,
        "probe": server.probe,
        "requests": load.requests,
        "rps": load.rps,
        "p50_ms": load.p50_us / 1e3,
        "p99_ms": load.p99_us / 1e3,
        "p999_ms": load.p999_us / 1e3,
        "generations": gens,
        "tracked_before": before["tracked"],
        "tracked_after": after["tracked"],
        "by_generation_after": after["by_generation"],
        "stallwatch_types_after": after["stallwatch_types"],
        "types_after": after["types"],
        "types_before": before["types"],
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [
        f"`{args.command}` ({args.framework}, uvicorn {' '.join(FLAVOURS[args.flavour])}, "
        f"wrk -c{args.connections} on `{'/work' if args.handler == 'work' else '/'}`, "
        f"{args.duration} s each; loadavg {loadavg()})",
        "",
        "| variant | req/s | p50 / p99 / p99.9 ms | gen0 / gen1 / gen2 per 10k req "
        "| mean ms gen0 / gen1 / gen2 | longest gen2 ms | GC ms per 10k req "
        "| freed by gen0 / gen1 / gen2 per 10k | tracked objects after (gen2) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        g = r["generations"]
        lines.append(
            f"| {r['variant']} | {r['rps']:,.0f} "
            f"| {r['p50_ms']:.2f} / {r['p99_ms']:.2f} / {r['p999_ms']:.2f} "
            f"| {g[0]['per_10k']:.1f} / {g[1]['per_10k']:.2f} / {g[2]['per_10k']:.3f} "
            f"| {g[0]['mean_ms']:.3f} / {g[1]['mean_ms']:.3f} / {g[2]['mean_ms']:.2f} "
            f"| {g[2]['longest_ms']:.2f} "
            f"| {sum(x['ms_per_10k'] for x in g):.2f} "
            f"| {g[0]['freed_per_10k']:.0f} / {g[1]['freed_per_10k']:.0f} "
            f"/ {g[2]['freed_per_10k']:.0f} "
            f"| {r['tracked_after']:,} ({r['by_generation_after'][2]:,}) |"
        )
    lines.append("")
    for r in results:
        grown = {
            k: v - r["types_before"].get(k, 0)
            for k, v in r["types_after"].items()
            if v - r["types_before"].get(k, 0) > 50
        }
        sw = ", ".join(f"{k} {v}" for k, v in sorted(r["stallwatch_types_after"].items()))
        lines.append(
            f"- {r['variant']}: stallwatch objects tracked after the run: {sw or 'none'}; "
            f"types that grew by more than 50 during it: "
            + (", ".join(f"{k} +{v}" for k, v in grown.items()) or "none")
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--framework", default="fastapi", choices=("starlette", "fastapi"))
    parser.add_argument("--flavour", default="standard", choices=tuple(FLAVOURS))
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--handler", default="ping", choices=("ping", "work"))
    parser.add_argument("--bhm", action="store_true", help="with a user BaseHTTPMiddleware")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk (10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--wrk-cpu", default="1")
    parser.add_argument("--at", metavar="REV", help="serve stallwatch as committed at REV")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    args.command = f"python -m benchmarks.gc_tail {' '.join(given)}".strip()
    print_machine("stallwatch GC tail")
    print(f"command: {args.command}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="stallwatch-gc-") as tmp:
        logs = Path(tmp)
        package = {"BENCH_PACKAGE_DIR": str(package_at(args.at, logs))} if args.at else {}
        with wrk_script(logs) as script:
            for variant in [v for v in args.variants.split(",") if v]:
                results.append(one(variant, args, logs, script, package))
                print(f"{variant} done (loadavg {loadavg()})", flush=True)
    print("\n".join(["", *report(results, args)]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
