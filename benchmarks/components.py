"""What each part of stallwatch costs per request, measured in-process where wrk cannot see.

wrk's figures move by about +-5 us between runs on a loaded machine, more than most single
parts cost, so the parts are measured here, in two ways:

1. **Through the real server path.** Real uvicorn (``uvicorn.Server``, h11 on the asyncio
   loop, httptools on uvloop) serves the benchmark's JSON route on a loopback socket to a
   closed-loop client on the same loop: ``--connections`` keep-alive connections, each sending
   its next request when the previous response is in. Everything runs on one thread pinned to
   one core, so there is no second process to schedule and no load tool to share the core
   with, and a trial of thousands of requests repeats to well under a microsecond. Variants,
   each a step on the previous one, give the breakdown by difference:

   - ``bare``: the Starlette app alone;
   - ``noop``: a no-op pure-ASGI middleware (the floor of any middleware);
   - ``timer``: the floor of any per-request loop timer in Python, for reference (a context
     variable, the request's status, each step of its coroutine timed; nothing else);
   - ``monitor``: the bare app on a loop watched by ``LoopMonitor`` (heartbeat, probe and
     watchdog thread: the loop-level hooks);
   - ``steps``: ``StallwatchMiddleware`` reduced to opening a request span and timing each
     step of the request (no route name, no frozen time, no metrics);
   - ``spans``: ``StallwatchMiddleware`` with only its three per-request metric updates taken
     out (route name and frozen-time computation back in);
   - ``stallwatch``: ``StallwatchMiddleware`` with everything on.

   The client's own work is in every variant alike, so differences are the server's.

2. **Tight loops** of the single operations on the request path: a clock read, a histogram
   observation, a counter increment, one step through a ``RequestSpan``, the frozen-time
   fast path, the poll probe per loop iteration, and one whole request through each
   middleware around an app that never suspends. Timed in CPU time of the thread
   (``time.thread_time_ns``), which, unlike the wall clock, does not count the time another
   process held the core.

    python -m benchmarks.components                 # about 3 minutes
    python -m benchmarks.components --rounds 2 --requests 5000   # a quick check
    python -m benchmarks.components --skip-micro --path /work --gc   # the ~200 us handler; GC
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Generator
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.applications import Starlette
from starlette.middleware import Middleware

from benchmarks._common import loadavg, median, print_machine, run_on
from benchmarks.apps import NoopMiddleware, StepTimerMiddleware, _routes
from stallwatch import LoopMonitor, StallwatchMiddleware, get_monitor
from stallwatch.loop.probes import PollProbe
from stallwatch.loop.timeline import Timeline
from stallwatch.request.spans import RequestSpan

SERVER_VARIANTS = ("bare", "noop", "timer", "monitor", "steps", "spans", "stallwatch")
FLAVOURS = {"plain": ("asyncio", "h11"), "standard": ("uvloop", "httptools")}
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
"""The request every client sends (``--path`` changes it: ``/work`` is the ~200 us handler)."""


class _GCClock:
    """Collections per generation and the seconds they took, while ``counting``.

    A ``gc.callbacks`` hook costs about a microsecond a collection, the same in every variant:
    it is installed only with ``--gc``.
    """

    def __init__(self) -> None:
        self.counting = False
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._began = 0.0

    def reset(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self.counting:
            generation = info["generation"]
            self.collections[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._began


_GC_CLOCK = _GCClock()


# -- 1. through the real server path ------------------------------------------------------------


class _WithoutMetrics(StallwatchMiddleware):
    """The middleware minus its three metric updates: everything else on the request path."""

    def _close(self, span: RequestSpan, end: float) -> None:
        timeline = span.timeline
        timeline.request_ended(span, end)
        span.route_label()
        timeline.frozen(span, end)
        span.release()


class _StepsOnly(StallwatchMiddleware):
    """The middleware that only opens a span and times its steps: no route, frozen, metrics."""

    def _close(self, span: RequestSpan, end: float) -> None:
        span.timeline.request_ended(span, end)
        span.release()


_MIDDLEWARE: dict[str, type[StallwatchMiddleware]] = {
    "steps": _StepsOnly,
    "spans": _WithoutMetrics,
    "stallwatch": StallwatchMiddleware,
}


def _app(variant: str, registry: CollectorRegistry, options: dict[str, Any]) -> Starlette:
    middleware: list[Middleware] = []
    if variant == "noop":
        middleware = [Middleware(NoopMiddleware)]
    elif variant == "timer":
        middleware = [Middleware(StepTimerMiddleware)]
    elif variant in _MIDDLEWARE:
        middleware = [
            Middleware(
                _MIDDLEWARE[variant],  # type: ignore[arg-type]  # keyword options of its own
                registry=registry,
                metrics_path="/metrics",
                **options,
            )
        ]
    return Starlette(routes=_routes(), middleware=middleware)


class _Client(asyncio.Protocol):
    """One keep-alive connection that sends its next request as soon as a response is in.

    Responses of the route are all the same size (uvicorn's date header has a fixed width), so
    counting bytes is counting responses: the client's own cost stays small and constant.
    """

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.pending = 0
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pool = self.pool
        self.pending += len(data)
        while self.pending >= pool.size:
            self.pending -= pool.size
            pool.done += 1
            if pool.sent < pool.total:
                pool.sent += 1
                assert self.transport is not None
                self.transport.write(REQUEST)
            elif pool.done == pool.total and not pool.finished.done():
                pool.finished.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.pool.finished.done():
            self.pool.finished.set_exception(ConnectionError("server closed the connection"))


class _Pool:
    def __init__(self, size: int, total: int) -> None:
        self.size = size
        self.total = total
        self.sent = 0
        self.done = 0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()


async def _response_size(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return len(head) + length


async def _load(port: int, size: int, requests: int, connections: int) -> tuple[float, float]:
    """Wall and CPU seconds for ``requests`` responses over keep-alive ``connections``.

    CPU time is the process's, all threads (the watchdog's too), user and kernel: unlike the
    wall clock it does not grow when another process takes the core, which on a shared
    machine is what makes a difference of one microsecond measurable.
    """
    loop = asyncio.get_running_loop()
    pool = _Pool(size, requests)
    clients = []
    for _ in range(connections):
        _, client = await loop.create_connection(lambda: _Client(pool), "127.0.0.1", port)
        clients.append(client)
    _GC_CLOCK.reset()
    _GC_CLOCK.counting = True
    began = time.perf_counter()
    cpu = time.process_time()
    for client in clients:
        if pool.sent < pool.total:
            pool.sent += 1
            client.transport.write(REQUEST)
    await pool.finished
    cpu = time.process_time() - cpu
    elapsed = time.perf_counter() - began
    _GC_CLOCK.counting = False
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return elapsed, cpu


async def _trial(
    variant: str,
    http: str,
    requests: int,
    warmup: int,
    connections: int,
    options: dict[str, Any] | None = None,
) -> tuple[float, float]:
    """Wall and CPU microseconds per request of one variant, after ``warmup`` requests
    (``options``: the monitor's, where the variant has one)."""
    options = options or {}
    registry = CollectorRegistry()
    # proto IPPROTO_TCP, as uvicorn's own sockets have it: asyncio sets TCP_NODELAY on the
    # accepted connections only then, and without it Nagle adds 40 ms to every response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        _app(variant, registry, options), http=http, lifespan="on", log_level="warning",
        access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    monitor: LoopMonitor | None = None
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.01)
        if variant == "monitor":
            monitor = LoopMonitor(registry=registry, **options)
            monitor.start()
        size = await _response_size(port)
        await _load(port, size, warmup, connections)
        gc.collect()
        wall, cpu = await _load(port, size, requests, connections)
        return wall / requests * 1e6, cpu / requests * 1e6
    finally:
        if monitor is not None:
            monitor.stop()
        server.should_exit = True
        await serving
        sock.close()


Series = dict[str, dict[str, dict[str, list[float]]]]
"""flavour -> variant -> clock -> one figure per round: "cpu", "wall" and "gc0" to "gc2" in
microseconds per request, "gc0n" to "gc2n" in collections per 1000 requests (with ``--gc``)."""


def server_path(
    flavours: list[str], rounds: int, requests: int, warmup: int, connections: int
) -> Series:
    clocks = ("cpu", "wall", "gc0", "gc1", "gc2", "gc0n", "gc1n", "gc2n")
    results: Series = {f: {v: {c: [] for c in clocks} for v in SERVER_VARIANTS} for f in flavours}
    for round_no in range(rounds):
        for flavour in flavours:
            loop_kind, http = FLAVOURS[flavour]
            order = list(SERVER_VARIANTS)
            shift = round_no % len(order)
            for variant in order[shift:] + order[:shift]:
                wall, cpu = run_on(loop_kind, _trial(variant, http, requests, warmup, connections))
                results[flavour][variant]["wall"].append(wall)
                results[flavour][variant]["cpu"].append(cpu)
                for generation in range(3):  # zeros unless --gc
                    results[flavour][variant][f"gc{generation}"].append(
                        _GC_CLOCK.seconds[generation] / requests * 1e6
                    )
                    results[flavour][variant][f"gc{generation}n"].append(
                        _GC_CLOCK.collections[generation] / requests * 1000
                    )
        print(
            f"round {round_no + 1}/{rounds}, CPU us/request: "
            + "; ".join(
                f"{f} " + " ".join(f"{v} {results[f][v]['cpu'][-1]:.1f}" for v in SERVER_VARIANTS)
                for f in flavours
            )
            + f" (loadavg {loadavg()})",
            flush=True,
        )
    return results


COMPONENTS = (
    ("no-op pure-ASGI middleware, for reference (noop - bare)", "noop", "bare"),
    ("the least per-request loop timer, for reference (timer - bare)", "timer", "bare"),
    ("loop-level hooks: heartbeat, probe, watchdog (monitor - bare)", "monitor", "bare"),
    ("middleware, span, in-flight set, step timing (steps - monitor)", "steps", "monitor"),
    ("route name and frozen time (spans - steps)", "spans", "steps"),
    ("three metric updates (stallwatch - spans)", "stallwatch", "spans"),
    ("**stallwatch in all (stallwatch - bare)**", "stallwatch", "bare"),
)


def report_server_path(results: Series, connections: int) -> None:
    for flavour, by_variant in results.items():
        loop_kind, http = FLAVOURS[flavour]

        # Differences within a round cancel drift between rounds; their median is reported.
        def diff(
            a: str, b: str, clock: str, by: dict[str, dict[str, list[float]]] = by_variant
        ) -> float:
            return median([x - y for x, y in zip(by[a][clock], by[b][clock], strict=True)])

        print(f"\n## Server path, {flavour}: {loop_kind} loop, {http}, {connections} connections")
        print("| variant | CPU us/request (median) | CPU min-max | wall us/request (median) |")
        print("|---|---:|---:|---:|")
        for variant, series in by_variant.items():
            cpu, wall = series["cpu"], series["wall"]
            print(
                f"| {variant} | {median(cpu):.2f} | {min(cpu):.2f}-{max(cpu):.2f} "
                f"| {median(wall):.2f} |"
            )
        print("\n| component | CPU us/request | wall us/request |")
        print("|---|---:|---:|")
        for name, a, b in COMPONENTS:
            print(f"| {name} | {diff(a, b, 'cpu'):+.2f} | {diff(a, b, 'wall'):+.2f} |")
        if any(any(series["gc0n"]) for series in by_variant.values()):
            print(
                "\n| variant | collections per 1000 requests, gen 0 / 1 / 2 "
                "| GC us/request, gen 0 / 1 / 2 (CPU us of it all) |"
            )
            print("|---|---:|---:|")
            for variant, series in by_variant.items():
                counts = " / ".join(f"{median(series[f'gc{g}n']):.1f}" for g in range(3))
                spent = [median(series[f"gc{g}"]) for g in range(3)]
                shown = " / ".join(f"{x:.2f}" for x in spent)
                print(f"| {variant} | {counts} | {shown} ({sum(spent):.2f}) |")


# -- 2. tight loops ------------------------------------------------------------------------------


def _per_op_ns(body: Callable[[int], None], n: int, repeats: int) -> float:
    """Median nanoseconds per iteration of ``body(n)``, minus an empty loop of the same size."""

    def empty(count: int) -> None:
        for _ in range(count):
            pass

    def timed(fn: Callable[[int], None]) -> float:
        began = time.thread_time_ns()
        fn(n)
        return (time.thread_time_ns() - began) / n

    gc.disable()
    try:
        runs = []
        for _ in range(repeats):
            runs.append(timed(body) - timed(empty))
    finally:
        gc.enable()
    return statistics.median(runs)


class _Yield:
    """The cheapest awaitable that suspends: one step of a coroutine per await."""

    def __await__(self) -> Generator[None, None, None]:
        yield None


async def _steps(count: int) -> None:
    for _ in range(count):
        await _Yield()


def _noop_callback() -> None:
    return None


def _timeline() -> Timeline:
    timeline = Timeline(floor=0.001, threshold=0.020, on_stall=lambda stretch: None)
    timeline.timed_by(exact=True, origin_previous=True)
    return timeline


def micro(n: int, repeats: int) -> dict[str, float]:
    registry = CollectorRegistry()
    histogram = Histogram("bench_h_seconds", "h", ["route"], registry=registry)
    counter = Counter("bench_c_seconds", "c", ["route"], registry=registry)
    h_child = histogram.labels("/")
    c_child = counter.labels("/")
    clock = time.perf_counter
    results: dict[str, float] = {}

    def clock_read(count: int) -> None:
        for _ in range(count):
            clock()

    def observe(count: int) -> None:
        for _ in range(count):
            h_child.observe(0.000123)

    def inc(count: int) -> None:
        for _ in range(count):
            c_child.inc(0.000123)

    def labels(count: int) -> None:
        for _ in range(count):
            histogram.labels("/")

    results["perf_counter()"] = _per_op_ns(clock_read, n, repeats)
    results["histogram child .observe()"] = _per_op_ns(observe, n, repeats)
    results["counter child .inc()"] = _per_op_ns(inc, n, repeats)
    results[".labels() lookup (avoided per request)"] = _per_op_ns(labels, n, repeats)

    # One step of the request's coroutine through the span, against the bare coroutine; each
    # step in a new stretch, as in a server, so the span joins the stretch's list every time.
    timeline = _timeline()
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/"}

    async def send(message: Any) -> None:
        return None

    def resolve(scope: Any) -> str:
        return "/"

    def direct(count: int) -> None:
        coro = _steps(count)
        try:
            while True:
                timeline.stretch_id += 1
                timeline.ran.clear()
                coro.send(None)
        except StopIteration:
            pass

    def through_span(count: int) -> None:
        span = RequestSpan(timeline, scope, send, resolve).wrap(_steps(count))
        try:
            while True:
                timeline.stretch_id += 1
                timeline.ran.clear()
                span.send(None)
        except StopIteration:
            pass

    results["one step through RequestSpan (timing + accounting)"] = _per_op_ns(
        through_span, n, repeats
    ) - _per_op_ns(direct, n, repeats)

    def open_close(count: int) -> None:
        for _ in range(count):
            span = RequestSpan(timeline, scope, send, resolve)
            timeline.request_started(span)
            timeline.request_ended(span, 0.0)
            span.route_label()

    results["RequestSpan created, in flight, route named"] = _per_op_ns(open_close, n, repeats)

    span = RequestSpan(timeline, scope, send, resolve)

    def frozen(count: int) -> None:
        for _ in range(count):
            timeline.frozen(span, timeline.stretch_start)

    results["frozen-time fast path (no long stretch)"] = _per_op_ns(frozen, n, repeats)

    results["poll probe per loop iteration"] = _poll_probe_ns(n // 2, repeats)
    for name, ns in _middleware_ns(n // 4, repeats).items():
        results[f"whole request through {name}, minus the app alone"] = ns
    return results


_START = {"type": "http.response.start", "status": 200, "headers": []}
_BODY = {"type": "http.response.body", "body": b"{}"}
_ROUTE = _routes()[0]


async def _minimal_app(scope: Any, receive: Any, send: Any) -> None:
    scope["route"] = _ROUTE  # what Starlette's router leaves in the scope
    await send(_START)
    await send(_BODY)


async def _asgi_send(message: Any) -> None:
    return None


async def _asgi_receive() -> Any:
    return {"type": "http.disconnect"}


def _middleware_ns(n: int, repeats: int) -> dict[str, float]:
    """One request's trip through each middleware around an app that never suspends.

    The requests run on a real loop (the middleware starts its monitor there) in batches of
    a hundred, each batch one loop iteration, so the loop polls between batches as it would
    between requests and the watchdog never sees a stall.
    """
    registry = CollectorRegistry()
    stacks: dict[str, Any] = {
        "app alone": _minimal_app,
        "no-op middleware": NoopMiddleware(_minimal_app),
        "steps-only StallwatchMiddleware": _StepsOnly(_minimal_app, registry=registry),
        "StallwatchMiddleware minus metrics": _WithoutMetrics(_minimal_app, registry=registry),
        "StallwatchMiddleware": StallwatchMiddleware(_minimal_app, registry=registry),
    }
    batch = 100

    async def run(app: Any, count: int) -> float:
        began = time.thread_time_ns()
        for _ in range(count // batch):
            for _ in range(batch):
                scope = {"type": "http", "method": "GET", "path": "/", "root_path": ""}
                coro = app(scope, _asgi_receive, _asgi_send)
                with contextlib.suppress(StopIteration):
                    coro.send(None)
            await asyncio.sleep(0)
        return (time.thread_time_ns() - began) / count

    async def measure() -> dict[str, list[float]]:
        times: dict[str, list[float]] = {name: [] for name in stacks}
        for app in stacks.values():
            await run(app, batch)  # the first request starts the monitor
        gc.disable()
        try:
            for _ in range(repeats):
                for name, app in stacks.items():
                    times[name].append(await run(app, n))
        finally:
            gc.enable()
        return times

    loop = asyncio.new_event_loop()
    try:
        times = loop.run_until_complete(measure())
        monitor = get_monitor(loop)
        if monitor is not None:
            monitor.stop()
    finally:
        loop.close()
    base = times.pop("app alone")
    return {
        name: statistics.median([x - b for x, b in zip(xs, base, strict=True)])
        for name, xs in times.items()
    }


def _poll_probe_ns(n: int, repeats: int) -> float:
    """Loop iterations on a real asyncio loop: a callback chain polls once per callback."""

    def iterations(loop: asyncio.AbstractEventLoop, count: int) -> float:
        done = loop.create_future()
        left = [count]

        def step() -> None:
            left[0] -= 1
            if left[0]:
                loop.call_soon(step)
            else:
                done.set_result(None)

        loop.call_soon(step)
        began = time.thread_time_ns()
        loop.run_until_complete(done)
        return (time.thread_time_ns() - began) / count

    loop = asyncio.new_event_loop()
    try:
        selector = PollProbe.selector_of(loop)
        gc.disable()
        diffs = []
        for _ in range(repeats):
            bare = iterations(loop, n)
            probe = PollProbe(selector, _timeline())  # installs itself
            probed = iterations(loop, n)
            probe.uninstall()
            diffs.append(probed - bare)
        gc.enable()
        return statistics.median(diffs)
    finally:
        loop.close()


def report_micro(results: dict[str, float]) -> None:
    print("\n## Tight loops (no server; inside a server each costs about 2-3 times more)")
    print("| operation | ns |")
    print("|---|---:|")
    for name, ns in results.items():
        print(f"| {name} | {ns:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--requests", type=int, default=20000, help="requests per trial")
    parser.add_argument("--warmup", type=int, default=3000, help="warm-up requests per trial")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--flavours", default="plain,standard", help="plain,standard")
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to; -1: no pinning")
    parser.add_argument("--micro-n", type=int, default=200_000, help="tight-loop iterations")
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--path", default="/", help="the route every request asks for (/)")
    parser.add_argument("--gc", action="store_true", help="also time the collections")
    args = parser.parse_args(argv)
    flavours = [f for f in args.flavours.split(",") if f]
    for name in flavours:
        if name not in FLAVOURS:
            parser.error(f"unknown flavour {name!r}; choose from {', '.join(FLAVOURS)}")
    if not args.path.startswith("/") or any(c.isspace() for c in args.path):
        parser.error(f"--path must be a path such as /work, got {args.path!r}")
    global REQUEST
    REQUEST = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    if args.gc:
        gc.callbacks.append(_GC_CLOCK)

    # Stalls in a benchmark are the benchmark's own (a gc.collect() between phases); their log
    # lines would only interleave with the tables.
    logging.getLogger("stallwatch").setLevel(logging.ERROR)
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    print_machine("stallwatch component costs")
    print(
        "command: python -m benchmarks.components "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )
    pinned = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else "?"
    print(f"pinned to cpus {pinned}")
    before = loadavg()
    started = time.monotonic()
    if not args.skip_micro:
        report_micro(micro(args.micro_n, repeats=7))
        sys.stdout.flush()
    if not args.skip_server:
        print(
            f"\nserver path: {args.rounds} rounds x {len(SERVER_VARIANTS)} variants, "
            f"{args.requests} requests each after {args.warmup} warm-up",
            flush=True,
        )
        results = server_path(flavours, args.rounds, args.requests, args.warmup, args.connections)
        report_server_path(results, args.connections)
    print(f"\nloadavg before: {before}")
    print(f"loadavg after:  {loadavg()}")
    print(f"elapsed: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
