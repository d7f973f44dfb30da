"""The load generator's printout: one table row per mode, load and route, stallwatch's
diagnosis under each step, and beside ``/ping``'s measured tail what queueing theory predicts
for that load. The verdict on the demo's claim is in ``verdict.py``."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .openloop import RouteResult, percentile
from .queueing import mean_wait, wait_quantile
from .scrape import ServerView, StallLine

CACHE = "/cache/{key}"
ITEMS = "/items/{item_id}"
PING = "/ping"


@dataclass(frozen=True)
class Step:
    """One mode at one offered load: what the client saw and what stallwatch saw."""

    mode: str
    threads: int | None
    """The demo's executor pool size, when known."""
    rate: float
    """Offered cache requests per second."""
    utilization: float
    """The share of the loop that load asks for in blocking mode (from the calibration)."""
    service: float
    """Seconds of loop one cache request takes (from the calibration)."""
    arrivals: str
    duration: float
    client: list[RouteResult]
    server: ServerView
    stall_lines: list[StallLine]
    """The step's stalls from ``/demo/stalls`` by culprit, cause and line, largest first."""

    def route(self, name: str) -> RouteResult | None:
        return next((r for r in self.client if r.route == name), None)

    def p99(self, name: str) -> float:
        result = self.route(name)
        return percentile(sorted(result.latencies), 0.99) if result else float("nan")

    @property
    def theory_p99(self) -> float:
        """The p99 wait M/D/1 predicts for ``/ping`` in blocking mode at this load: only for
        Poisson load, the arrivals the model is about (NaN otherwise)."""
        if self.mode != "blocking" or self.arrivals != "poisson":
            return float("nan")
        return wait_quantile(0.99, self.utilization, self.service)

    @property
    def theory_mean(self) -> float:
        if self.mode != "blocking" or self.arrivals != "poisson":
            return float("nan")
        return mean_wait(self.utilization, self.service)


def mode_label(mode: str, threads: int | None) -> str:
    """``executor:6`` for executor mode with a 6-thread pool; pool sizes do not matter to
    blocking mode."""
    return f"{mode}:{threads}" if mode == "executor" and threads is not None else mode


def ms(seconds: float, width: int = 7) -> str:
    if math.isnan(seconds):
        return f"{'-':>{width}}"
    if math.isinf(seconds):
        return f"{'inf':>{width}}"
    return f"{seconds * 1e3:{width}.1f}"


def short_frame(frame: str) -> str:
    """``/long/path/demo_app/cache.py:142 in read_blocking`` -> ``demo_app/cache.py:142 in ...``."""
    path, sep, rest = frame.partition(":")
    if not sep:
        return frame
    parts = path.split(os.sep)
    return os.sep.join(parts[-2:]) + sep + rest


LEAD = 26
HEADER = (
    f"{'mode':<11}{'load':>5}{'cache/s':>8}  {'route':<17}{'sent':>6}"
    f"{'p50':>7}{'p95':>7}{'p99':>7}{'max':>7}{'M/D/1':>7} |{'srv p99':>8}{'frozen/req':>11}"
    "  by culprit"
)


def route_row(step: Step, result: RouteResult, first: bool) -> str:
    values = sorted(result.latencies)
    server = step.server.routes.get(result.route)
    server_p99 = server.quantile(0.99) if server is not None else float("nan")
    frozen = step.server.frozen.get(result.route, {})
    count = server.count if server is not None else 0.0
    per_request = sum(frozen.values()) / count if count else float("nan")
    culprits = ", ".join(
        f"{name} {seconds / count * 1e3:.1f}"
        for name, seconds in list(frozen.items())[:2]
        if count and seconds / count >= 0.00005
    )
    label = result.route + (" (probe)" if result.route == PING else "")
    failed = result.errors + result.unfinished
    sent = f"{result.sent}" + (f"!{failed}" if failed else "")
    theory = step.theory_p99 if result.route == PING else float("nan")
    lead = (
        f"{mode_label(step.mode, step.threads):<11}{step.utilization:>5.0%}{step.rate:>8.0f}  "
        if first
        else " " * LEAD
    )
    return (
        f"{lead}{label:<17}{sent:>6}"
        f"{ms(percentile(values, 0.5))}{ms(percentile(values, 0.95))}"
        f"{ms(percentile(values, 0.99))}{ms(values[-1] if values else float('nan'))}"
        f"{ms(theory)} |{ms(server_p99, 8)}{ms(per_request, 8)} ms  {culprits}"
    )


def causes_text(step: Step) -> str:
    """``starvation 11, gc 1``: stalls by cause, most first."""
    causes: dict[str, float] = {}
    for (_, cause), n in step.server.stalls.items():
        causes[cause] = causes.get(cause, 0.0) + n
    return ", ".join(f"{c} {n:.0f}" for c, n in sorted(causes.items(), key=lambda kv: -kv[1]))


def pool_text(step: Step) -> str:
    """The pool beside the loop: how long reads waited for a thread, how many threads ran."""
    server = step.server
    wait = server.pool_wait
    threads = server.pool_run.total / step.duration if step.duration > 0 else float("nan")
    size = f" of {step.threads}" if step.threads is not None else ""
    return (
        f"pool: {wait.count:.0f} jobs waited p99 {ms(wait.quantile(0.99), 0)} ms "
        f"(mean {ms(wait.mean(), 0)} ms) for a thread; {threads:.1f}{size} threads busy on average"
    )


def diagnosis(step: Step) -> list[str]:
    server = step.server
    lag = server.lag
    lines = [
        f"{'':{LEAD}}loop lag p99 {ms(lag.quantile(0.99), 0)} ms, "
        f"max <= {ms(lag.max_bound(), 0)} ms (stallwatch, {lag.count:.0f} beats)"
    ]
    if server.pool_wait.count:
        lines.append(f"{'':{LEAD}}{pool_text(step)}")
    stalls = sum(server.stalls.values())
    if not stalls:
        lines.append(f"{'':{LEAD}}stalls: none")
        return lines
    lines.append(f"{'':{LEAD}}stalls: {stalls:.0f} ({causes_text(step)})")
    # The line that blocked is the one to fix, so blocking stalls come first; a starved
    # loop's stack shows where its thread was when the CPU was taken away from it.
    ranked = sorted(step.stall_lines, key=lambda s: s.cause != "blocking")
    if ranked:
        top = ranked[0]
        lines.append(
            f"{'':{LEAD}}top culprit: {top.culprit} at {short_frame(top.frame)} "
            f"({top.count} {top.cause} stalls, {top.seconds * 1e3:.0f} ms, in /demo/stalls)"
        )
    return lines


def table(steps: Sequence[Step]) -> str:
    lines = [HEADER, "-" * len(HEADER)]
    for step in steps:
        for i, result in enumerate(step.client):
            lines.append(route_row(step, result, i == 0))
        lines.extend(diagnosis(step))
    return "\n".join(lines)


LEGEND = (
    "load: the share of the server's loop the offered traffic takes in blocking mode "
    "(calibrated above); cache/s: offered cache requests per second.\n"
    "Latencies in ms, measured by the client from each request's due time (open loop). "
    "sent!N: N failed or unanswered.\n"
    "M/D/1: the p99 wait queueing theory predicts for /ping in blocking mode at that load "
    "(Poisson arrivals, a cache request's calibrated cost as the fixed service time); the "
    "measured p99 adds /ping's own round trip of a millisecond or so. inf: past 100 % the "
    "queue only grows, for as long as the load lasts.\n"
    "srv p99: from stallwatch's own request histogram (interpolated in its buckets).\n"
    "frozen/req: mean ms a request of the route waited while other work held the loop, by "
    "culprit (stallwatch_request_frozen_seconds_total)."
)


def step_json(step: Step) -> dict[str, object]:
    """The raw figures of a step, for ``--json``."""
    return {
        "mode": step.mode,
        "threads": step.threads,
        "rate": step.rate,
        "utilization": step.utilization,
        "service": step.service,
        "arrivals": step.arrivals,
        "theory_p99": step.theory_p99 if math.isfinite(step.theory_p99) else None,
        "duration": step.duration,
        "routes": [r.to_wire() for r in step.client],
        "server": {
            "lag_p99": step.server.lag.quantile(0.99),
            "lag_max_bound": step.server.lag.max_bound(),
            "requests": {r: h.count for r, h in step.server.routes.items()},
            "frozen": step.server.frozen,
            "stalls": [[culprit, cause, n] for (culprit, cause), n in step.server.stalls.items()],
            "busy": step.server.busy,
        },
        "stall_lines": [asdict(line) for line in step.stall_lines],
    }
