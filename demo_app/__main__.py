"""``python -m demo_app`` (or ``stallwatch-demo``, or ``stallwatch demo``): serve the demo,
say what to open and try. ``... load [options]`` runs the load generator instead."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .cache import DEFAULT_EXECUTOR_THREADS, DEFAULT_SEED_ROWS, MODES, SqliteCache

PACKAGE = __package__ or "demo_app"
"""``demo_app`` in a checkout, ``stallwatch.demo`` from an installed wheel."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stallwatch-demo",
        description="A FastAPI service whose SQLite cache route blocks the event loop, "
        "watched by stallwatch. Toggle the cache mode live and watch the other routes recover. "
        "'stallwatch-demo load --help': the load generator that shows it.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="blocking",
        help="cache mode at start (default %(default)s); switch it live with POST /demo/mode",
    )
    p.add_argument(
        "--db", default=None, help="SQLite file to create and seed (default: a temporary file)"
    )
    p.add_argument(
        "--executor-threads",
        type=positive_int,
        default=DEFAULT_EXECUTOR_THREADS,
        help="thread pool size of executor mode (default %(default)s)",
    )
    p.add_argument(
        "--seed-rows",
        type=positive_int,
        default=DEFAULT_SEED_ROWS,
        help="rows each read scans, i.e. its cost: 100000 is about 2 ms (default %(default)s)",
    )
    p.add_argument(
        "--stall-threshold",
        type=float,
        default=0.020,
        help="stallwatch's stall threshold in seconds (default %(default)s)",
    )
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop", "auto"),
        default="asyncio",
        help="event loop, as uvicorn's --loop (default %(default)s, whose poll "
        "stallwatch times exactly; under uvloop it times each poll through libuv)",
    )
    return p


def banner(base: str, mode: str, cache: SqliteCache) -> str:
    toggle = (
        f"curl -X POST {base}/demo/mode -H 'content-type: application/json' "
        '-d \'{"mode": "executor"}\''
    )
    plural = "s" if cache.executor_threads > 1 else ""
    return "\n".join(
        [
            "",
            f"stallwatch demo: the cache is in {mode} mode; one read scans {cache.seed_rows:,} "
            f"SQLite rows in {cache.read_seconds * 1e3:.1f} ms "
            f"(executor pool: {cache.executor_threads} thread{plural})",
            f"  {base}/                 start here: what this is, the mode and a button to flip it",
            f"  {base}/cache/key-42    the cache route (holds the event loop in blocking mode)",
            f"  {base}/ping            never blocks, yet waits behind the cache reads",
            f"  {base}/items/7         never blocks either",
            f"  {base}/_stallwatch/    stallwatch's stall report: culprit route, line, victims",
            f"  {base}/demo/stalls     the same stalls as JSON",
            f"  {base}/metrics         Prometheus metrics (stallwatch_* and demo_cache_mode)",
            f"toggle the mode:  {toggle}",
            f"put load on it:   {sys.executable} -m {PACKAGE}.load --url {base}",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["load"]:
        from .load import main as load

        return load(argv[1:])
    args = parser().parse_args(argv)
    try:
        import uvicorn

        from .app import create_app
    except ModuleNotFoundError as exc:
        print(
            f"stallwatch-demo: the demo needs {exc.name}; install the demo extras: "
            "pip install 'stallwatch[demo]' (from a checkout: pip install -e '.[demo]')",
            file=sys.stderr,
        )
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"http://{host}:{args.port}"
    app = create_app(
        mode=args.mode,
        db=args.db,
        executor_threads=args.executor_threads,
        seed_rows=args.seed_rows,
        stall_threshold=args.stall_threshold,
        on_ready=lambda cache: print(banner(base, args.mode, cache), flush=True),
    )
    # No access log: at hundreds of requests a second it would cost the loop more than the
    # routes do, and stallwatch's metrics say more.
    uvicorn.run(app, host=args.host, port=args.port, loop=args.loop, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
