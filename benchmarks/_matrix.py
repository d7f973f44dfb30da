"""The overhead matrix's cells, and the figures and verdicts taken from their runs.

A *cell* is one point of the matrix: framework, uvicorn flavour, wrk connections, whether the
app has a ``BaseHTTPMiddleware`` of its own, and which handler is loaded. Each cell is measured
for every variant once per round, and every figure is taken against bare *in the same round*
(a paired difference or ratio), then the median over rounds is reported: drift of a shared
machine between rounds cancels, and one disturbed run moves a median less than a mean.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._common import median
from benchmarks._servers import Load

FRAMEWORKS = ("starlette", "fastapi")
FLAVOUR_NAMES = ("plain", "standard")
CONNECTIONS = (1, 50, 256)
USER_MIDDLEWARE = ("nobhm", "bhm")
HANDLERS = ("ping", "work")
HANDLER_PATHS = {"ping": "/", "work": "/work"}
PEERS = ("loopguard", "instrumentator", "exporter")

P99_TARGET = 1.10
P99_FLOOR = 1.25
ADDED_US_TARGETS = {("fastapi", 50): (8.0, 5.0), ("starlette", 32): (7.0, 7.0)}
"""(framework, connections) -> (at most, aim) added microseconds per request, no-work route
without a user middleware, from the issue."""


@dataclass(frozen=True, slots=True, order=True)
class Cell:
    framework: str
    flavour: str
    connections: int
    middleware: str  # "nobhm" or "bhm"
    handler: str  # "ping" or "work"

    @property
    def key(self) -> str:
        return "/".join(
            (self.framework, self.flavour, str(self.connections), self.middleware, self.handler)
        )

    @property
    def group(self) -> tuple[str, str, str]:
        """The cells one set of servers serves: only wrk's side differs within a group."""
        return (self.flavour, self.framework, self.middleware)

    @property
    def path(self) -> str:
        return HANDLER_PATHS[self.handler]


def all_cells(connections: Sequence[int] = CONNECTIONS) -> list[Cell]:
    return [
        Cell(fw, fl, c, mw, h)
        for fl, fw, mw, h, c in itertools.product(
            FLAVOUR_NAMES, FRAMEWORKS, USER_MIDDLEWARE, HANDLERS, connections
        )
    ]


def select_cells(patterns: Iterable[str]) -> list[Cell]:
    """Cells matching any of ``patterns``: ``framework/flavour/connections/bhm|nobhm/handler``,
    each part a shell pattern (``*`` for all); a connection count off the default axis
    (``starlette/plain/32/nobhm/ping``) makes a cell of its own."""
    chosen: set[Cell] = set()
    for pattern in patterns:
        parts = pattern.split("/")
        if len(parts) != 5:
            raise ValueError(
                f"cell pattern {pattern!r} must have 5 parts: "
                "framework/flavour/connections/bhm|nobhm/ping|work"
            )
        extra = [int(parts[2])] if parts[2].isdigit() else []
        universe = all_cells(tuple(sorted(set(CONNECTIONS) | set(extra))))
        matched = [c for c in universe if fnmatch.fnmatchcase(c.key, pattern)]
        if not matched:
            raise ValueError(f"cell pattern {pattern!r} matches no cell")
        chosen.update(matched)
    return sorted(chosen, key=lambda c: (c.group, c.handler, c.connections))


@dataclass(frozen=True, slots=True)
class Run:
    round: int
    load: Load
    cpu_us: float  # server CPU time per request, all threads


@dataclass(frozen=True, slots=True)
class Figures:
    """One variant in one cell, against bare of the same rounds."""

    rps: float
    rps_min: float
    rps_max: float
    ratio: float
    added_us: float
    p50_ratio: float
    p99_ratio: float
    p999_ratio: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_us: float
    added_cpu_us: float
    errors: int


def figures(runs: Sequence[Run], bare: Sequence[Run]) -> Figures:
    by_round = {r.round: r for r in bare}
    pairs = [(r, by_round[r.round]) for r in runs if r.round in by_round]

    def paired(f: Any) -> float:
        return median([f(v, b) for v, b in pairs])

    rps = [r.load.rps for r in runs]
    return Figures(
        rps=median(rps),
        rps_min=min(rps),
        rps_max=max(rps),
        ratio=paired(lambda v, b: v.load.rps / b.load.rps),
        added_us=paired(lambda v, b: 1e6 / v.load.rps - 1e6 / b.load.rps),
        p50_ratio=paired(lambda v, b: v.load.p50_us / max(b.load.p50_us, 1.0)),
        p99_ratio=paired(lambda v, b: v.load.p99_us / max(b.load.p99_us, 1.0)),
        p999_ratio=paired(lambda v, b: v.load.p999_us / max(b.load.p999_us, 1.0)),
        p50_ms=median([r.load.p50_us / 1e3 for r in runs]),
        p99_ms=median([r.load.p99_us / 1e3 for r in runs]),
        p999_ms=median([r.load.p999_us / 1e3 for r in runs]),
        cpu_us=median([r.cpu_us for r in runs]),
        added_cpu_us=paired(lambda v, b: v.cpu_us - b.cpu_us),
        errors=sum(r.load.errors + r.load.non_2xx for r in runs),
    )


def verdicts(cell: Cell, table: dict[str, Figures]) -> list[str]:
    """The issue's targets, checked for stallwatch in one cell; empty when none applies."""
    sw = table.get("stallwatch")
    if sw is None:
        return []
    found: list[str] = []
    guard = table.get("loopguard")
    if guard is not None:
        ok = sw.ratio >= guard.ratio
        found.append(f"ratio {'>=' if ok else '<'} loopguard's{'' if ok else ' (MISS)'}")
    if sw.p99_ratio <= P99_TARGET:
        found.append("p99 within 1.1x")
    elif sw.p99_ratio <= P99_FLOOR:
        found.append("p99 within 1.25x only")
    else:
        found.append("p99 over 1.25x (MISS)")
    target = ADDED_US_TARGETS.get((cell.framework, cell.connections))
    if target is not None and cell.handler == "ping" and cell.middleware == "nobhm":
        most, aim = target
        state = "aim met" if sw.added_us <= aim else "met" if sw.added_us <= most else "MISS"
        found.append(f"{sw.added_us:+.1f} us vs <= {most:g} ({state})")
    return found


def _pct(ratio: float) -> str:
    return f"{ratio:.2f}"


def summary_table(cells: Sequence[Cell], tables: dict[str, dict[str, Figures]]) -> list[str]:
    lines = [
        "| cell | bare req/s | bare p50 / p99 / p99.9 ms | stallwatch ratio | +us/req "
        "| +CPU us/req | p50 / p99 / p99.9 x bare | monitor-only ratio "
        "| loopguard ratio (p99 x) | instrumentator ratio | starlette-exporter ratio | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cell in cells:
        table = tables.get(cell.key)
        if not table or "bare" not in table:
            continue
        bare = table["bare"]
        sw = table.get("stallwatch")

        def ratio(name: str, table: dict[str, Figures] = table) -> str:
            f = table.get(name)
            return "-" if f is None else _pct(f.ratio)

        guard = table.get("loopguard")
        lines.append(
            f"| {cell.key} | {bare.rps:,.0f} "
            f"| {bare.p50_ms:.2f} / {bare.p99_ms:.2f} / {bare.p999_ms:.2f} "
            + (
                f"| {_pct(sw.ratio)} | {sw.added_us:+.1f} | {sw.added_cpu_us:+.1f} "
                f"| {_pct(sw.p50_ratio)} / {_pct(sw.p99_ratio)} / {_pct(sw.p999_ratio)} "
                if sw is not None
                else "| - | - | - | - "
            )
            + f"| {ratio('monitor')} "
            + (f"| {_pct(guard.ratio)} ({_pct(guard.p99_ratio)}) " if guard else "| - ")
            + f"| {ratio('instrumentator')} | {ratio('exporter')} "
            + f"| {'; '.join(verdicts(cell, table))} |"
        )
    return lines


def detail_table(cell: Cell, table: dict[str, Figures], probes: dict[str, str]) -> list[str]:
    lines = [
        f"**{cell.key}**",
        "",
        "| variant | probe | req/s (min-max) | ratio | +us/req | CPU us/req (+paired) "
        "| p50 / p99 / p99.9 ms | p50 / p99 / p99.9 x bare | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in table.items():
        lines.append(
            f"| {name} | {probes.get(name) or '-'} "
            f"| {f.rps:,.0f} ({f.rps_min:,.0f}-{f.rps_max:,.0f}) | {f.ratio:.3f} "
            f"| {f.added_us:+.1f} | {f.cpu_us:.1f} ({f.added_cpu_us:+.1f}) "
            f"| {f.p50_ms:.2f} / {f.p99_ms:.2f} / {f.p999_ms:.2f} "
            f"| {_pct(f.p50_ratio)} / {_pct(f.p99_ratio)} / {_pct(f.p999_ratio)} | {f.errors} |"
        )
    return [*lines, ""]
