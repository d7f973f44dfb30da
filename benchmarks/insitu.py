"""What the middleware costs a request inside a real server, timed there, not guessed from wrk.

wrk's ratios move by ten points between runs on this machine; ``components.py`` times the
middleware in a tight loop, where its code and data stay in the CPU's caches. Neither says
what a request pays in a server under load. Here every server of ``benchmarks/apps.py`` gets
two timers of this module's own: ``_Outer``, outermost of the user's middleware, and
``_Inner``, innermost, right around the framework's exception middleware and router. For
each ``GET /`` that does not suspend (a minimal route never does), ``outer - inner`` is the
wall time of the instrumentation in between (none for ``bare`` and ``monitor``: what is left
is the timers' own cost), and ``inner`` is the app's own time as the instrumentation leaves
it to run, uvicorn's send included. The second matters: code and data of ours pushed out of
the caches make the app's own code slower, and that is part of what stallwatch costs.

One server per variant, pinned to one core as ``overhead.py`` does, loaded by wrk from the
other; rounds are interleaved, and each figure is the median over the rounds::

    flock /tmp/stallwatch-bench.lock python -m benchmarks.insitu --framework starlette \\
        --variants bare,noop,monitor,stallwatch,sw-nofrozen,sw-nometrics --rounds 3

``VARIANT@REV`` serves that variant with stallwatch as committed at ``REV``
(``--variants bare,stallwatch@HEAD,stallwatch``: a change against the last commit).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

from ._common import loadavg, median, print_machine
from ._servers import FLAVOURS, get_json, package_at, serve, wrk, wrk_script

TIMED_PATH = "/"


class _Timers:
    """The two timers' sums since the last reset (one server, its loop thread only)."""

    def __init__(self) -> None:
        self.entered_inner = 0.0
        self.left_inner = 0.0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.suspended = 0
        self.outer = 0.0
        self.inner = 0.0

    def figures(self) -> dict[str, float]:
        n = self.requests or 1
        return {
            "requests": self.requests,
            "suspended": self.suspended,
            "outer_us": self.outer / n * 1e6,
            "inner_us": self.inner / n * 1e6,
        }


TIMERS = _Timers()


class _Timer:
    """A pure-ASGI middleware that times ``GET /`` only; everything else passes through."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != TIMED_PATH:
            await self.app(scope, receive, send)
        else:
            await self.timed(scope, receive, send)

    async def timed(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError


class _Outer(_Timer):
    async def timed(self, scope: Any, receive: Any, send: Any) -> None:
        timers = TIMERS
        timers.entered_inner = timers.left_inner = 0.0
        began = perf_counter()
        await self.app(scope, receive, send)
        ended = perf_counter()
        if not timers.left_inner:
            return  # the instrumentation answered (not on this path) or the app failed
        inner = timers.left_inner - timers.entered_inner
        # A request that suspended waited for the loop meanwhile: its wall time is not cost.
        if ended - began > 0.005:
            timers.suspended += 1
            return
        timers.requests += 1
        timers.outer += ended - began
        timers.inner += inner


class _Inner(_Timer):
    async def timed(self, scope: Any, receive: Any, send: Any) -> None:
        TIMERS.entered_inner = perf_counter()
        await self.app(scope, receive, send)
        TIMERS.left_inner = perf_counter()


async def _timers_view(request: Any) -> Any:
    from starlette.responses import JSONResponse

    figures = TIMERS.figures()
    if request.query_params.get("reset"):
        TIMERS.reset()
    return JSONResponse(figures)


def instrument(app: Any) -> Any:
    """The app with the two timers around its user middleware, and ``/_insitu`` to read
    (``?reset=1``: and start over) their figures."""
    from starlette.middleware import Middleware

    if not hasattr(app, "user_middleware"):
        raise ValueError("only the variants that are a Starlette or FastAPI app are timed")
    app.user_middleware.insert(0, Middleware(_Outer))
    app.user_middleware.append(Middleware(_Inner))
    app.add_route("/_insitu", _timers_view)
    return app


@dataclass(frozen=True, slots=True)
class Round:
    variant: str
    rps: float
    requests: int
    suspended: int
    outer_us: float
    inner_us: float

    @property
    def between_us(self) -> float:
        return self.outer_us - self.inner_us


def measure(
    framework: str,
    flavour: str,
    variants: Sequence[str],
    *,
    rounds: int,
    duration: int,
    connections: int,
    server_cpu: str | None,
    wrk_cpu: str | None,
) -> list[Round]:
    found: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="insitu-") as tmp, wrk_script(Path(tmp)) as script:
        for number in range(rounds):
            print(f"round {number + 1}/{rounds}, loadavg {loadavg()}", flush=True)
            for variant in variants:
                name, _, rev = variant.partition("@")
                env = {"BENCH_FRAMEWORK": framework, "BENCH_VARIANT": name, "BENCH_INSITU": "1"}
                if rev:  # stallwatch as committed at REV, beside the working tree's
                    env["BENCH_PACKAGE_DIR"] = str(package_at(rev, Path(tmp)))
                with serve(variant, flavour, env, server_cpu, Path(tmp)) as server:
                    url = server.url + TIMED_PATH
                    wrk(url, seconds=1, connections=connections, cpu=wrk_cpu, script=script)
                    get_json(server.url + "/_insitu?reset=1")
                    load = wrk(
                        url, seconds=duration, connections=connections, cpu=wrk_cpu, script=script
                    )
                    timed = get_json(server.url + "/_insitu")
                found.append(
                    Round(
                        variant,
                        load.rps,
                        int(float(str(timed["requests"]))),
                        int(float(str(timed["suspended"]))),
                        float(str(timed["outer_us"])),
                        float(str(timed["inner_us"])),
                    )
                )
                r = found[-1]
                print(
                    f"  {variant:14s} {r.rps:8.0f} req/s  between {r.between_us:6.2f} us  "
                    f"app {r.inner_us:6.2f} us  ({r.requests} timed, {r.suspended} suspended)",
                    flush=True,
                )
    return found


def table(found: Sequence[Round], variants: Sequence[str]) -> list[str]:
    def med(variant: str, read: Callable[[Round], float]) -> float:
        return median([read(r) for r in found if r.variant == variant])

    base_between = med("bare", lambda r: r.between_us)
    base_inner = med("bare", lambda r: r.inner_us)
    base_rps = med("bare", lambda r: r.rps)
    lines = [
        "| variant | req/s / bare | between the timers, us | the app's own time, us | "
        "cost per request: between + app's extra, us |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant in variants:
        between = med(variant, lambda r: r.between_us) - base_between
        inner = med(variant, lambda r: r.inner_us)
        lines.append(
            f"| {variant} | {med(variant, lambda r: r.rps) / base_rps:.2f} | {between:+.2f} | "
            f"{inner:.2f} ({inner - base_inner:+.2f}) | {between + inner - base_inner:+.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--framework", default="starlette", choices=("starlette", "fastapi"))
    parser.add_argument("--flavour", default="standard", choices=tuple(FLAVOURS))
    parser.add_argument("--variants", default="bare,noop,monitor,stallwatch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4, help="seconds of wrk per server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--wrk-cpu", default="1")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    variants = [v for v in args.variants.split(",") if v]
    if "bare" not in variants:
        variants.insert(0, "bare")
    pin = not args.no_pin and shutil.which("taskset") is not None
    print_machine("stallwatch in situ")
    command = f"python -m benchmarks.insitu {' '.join(argv if argv is not None else sys.argv[1:])}"
    print(f"command: {command.strip()}")
    started = time.monotonic()
    found = measure(
        args.framework,
        args.flavour,
        variants,
        rounds=args.rounds,
        duration=args.duration,
        connections=args.connections,
        server_cpu=args.server_cpu if pin else None,
        wrk_cpu=args.wrk_cpu if pin else None,
    )
    took = (time.monotonic() - started) / 60
    print(
        f"\n{args.framework}, {args.flavour}, c={args.connections}, `GET /`, median of "
        f"{args.rounds} rounds x {args.duration} s ({took:.1f} min), loadavg after {loadavg()}:\n"
    )
    print("\n".join(table(found, variants)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
