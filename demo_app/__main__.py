"""``python -m demo_app`` (or ``stallwatch-demo``): serve the demo, say what to open and try."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from .app import DEFAULT_EXECUTOR_THREADS, MODES, create_app
from .cache import DEFAULT_SEED_ROWS, SqliteCache


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stallwatch-demo",
        description="A FastAPI service whose SQLite cache route blocks the event loop, "
        "watched by stallwatch. Toggle the cache mode live and watch the other routes recover.",
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
            f"  {base}/cache/key-42    the cache route (holds the event loop in blocking mode)",
            f"  {base}/ping            never blocks, yet waits behind the cache reads",
            f"  {base}/items/7         never blocks either",
            f"  {base}/demo/stalls     what stallwatch saw: culprit route, line, victims",
            f"  {base}/metrics         Prometheus metrics (stallwatch_* and demo_cache_mode)",
            f"toggle the mode:  {toggle}",
            f"put load on it:   {sys.executable} -m demo_app.load --url {base}",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
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


if __name__ == "__main__":
    main()
