"""The load generator's printout: one table row per mode, load and route, stallwatch's
diagnosis under each step, and the verdict on the demo's claim."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .openloop import RouteResult, percentile
from .scrape import ServerView, StallLine

CACHE = "/cache/{key}"
PING = "/ping"


@dataclass(frozen=True)
class Step:
    """One mode at one offered load: what the client saw and what stallwatch saw."""

    mode: str
    threads: int | None
    """The demo's executor pool size, when the generator started the demo and knows it."""
    rate: float
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


def mode_label(mode: str, threads: int | None) -> str:
    """``executor:6`` for executor mode with a 6-thread pool; pool sizes do not matter to
    blocking mode."""
    return f"{mode}:{threads}" if mode == "executor" and threads is not None else mode


def ms(seconds: float, width: int = 7) -> str:
    return f"{'-':>{width}}" if math.isnan(seconds) else f"{seconds * 1e3:{width}.1f}"


def short_frame(frame: str) -> str:
    """``/long/path/demo_app/cache.py:142 in read_blocking`` -> ``demo_app/cache.py:142 in ...``."""
    path, sep, rest = frame.partition(":")
    if not sep:
        return frame
    parts = path.split(os.sep)
    return os.sep.join(parts[-2:]) + sep + rest


HEADER = (
    f"{'mode':<11}{'cache/s':>8}  {'route':<17}{'sent':>6}{'ok/s':>8}"
    f"{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8} |{'srv p99':>8}{'frozen/req':>11}  by culprit"
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
    lead = f"{mode_label(step.mode, step.threads):<11}{step.rate:>8.0f}  " if first else " " * 21
    return (
        f"{lead}{label:<17}{sent:>6}{result.ok / step.duration:>8.1f}"
        f"{ms(percentile(values, 0.5), 8)}{ms(percentile(values, 0.95), 8)}"
        f"{ms(percentile(values, 0.99), 8)}{ms(values[-1] if values else float('nan'), 8)} |"
        f"{ms(server_p99, 8)}{ms(per_request, 8)} ms  {culprits}"
    )


def causes_text(step: Step) -> str:
    """``starvation 11, gc 1``: stalls by cause, most first."""
    causes: dict[str, float] = {}
    for (_, cause), n in step.server.stalls.items():
        causes[cause] = causes.get(cause, 0.0) + n
    return ", ".join(f"{c} {n:.0f}" for c, n in sorted(causes.items(), key=lambda kv: -kv[1]))


def diagnosis(step: Step) -> list[str]:
    server = step.server
    lag = server.lag
    lines = [
        f"{'':21}loop lag p99 {ms(lag.quantile(0.99), 0)} ms, max <= {ms(lag.max_bound(), 0)} ms"
        f" (stallwatch, {lag.count:.0f} beats)"
    ]
    stalls = sum(server.stalls.values())
    if not stalls:
        lines.append(f"{'':21}stalls: none")
        return lines
    lines.append(f"{'':21}stalls: {stalls:.0f} ({causes_text(step)})")
    # The line that blocked is the one to fix, so blocking stalls come first; a starved
    # loop's stack shows where its thread was when the CPU was taken away from it.
    ranked = sorted(step.stall_lines, key=lambda s: s.cause != "blocking")
    if ranked:
        top = ranked[0]
        lines.append(
            f"{'':21}top culprit: {top.culprit} at {short_frame(top.frame)} "
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
    "Latencies in ms, measured by the client from each request's due time (open loop). "
    "sent!N: N failed or unanswered.\n"
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


@dataclass(frozen=True)
class Check:
    """The demo's claim at one load where blocking mode's tail took off."""

    blocking: Step
    executor: Step | None
    """Executor mode on the same demo (same pool), at the same load."""
    others: list[Step]
    """Executor mode with other pool sizes at the same load: the trade-off."""

    @property
    def ping_server_mean(self) -> float:
        ping = self.blocking.server.routes.get(PING)
        return ping.mean() if ping is not None else float("nan")

    @property
    def frozen_by_cache(self) -> float:
        return self.blocking.server.frozen_per_request(PING, CACHE)

    @property
    def share(self) -> float:
        mean = self.ping_server_mean
        return self.frozen_by_cache / mean if mean > 0 else float("nan")

    @property
    def top_culprit(self) -> str:
        return next(iter(self.blocking.server.frozen.get(PING, {})), "none")

    def removed(self, step: Step) -> float:
        before = self.frozen_by_cache
        after = step.server.frozen_per_request(PING, CACHE)
        return 1 - after / before if before > 0 else float("nan")

    @property
    def holds(self) -> bool:
        return (
            self.executor is not None
            and self.top_culprit == CACHE
            and self.share >= 0.5
            and self.removed(self.executor) >= 0.75
        )


def took_off(steps: Sequence[Step]) -> tuple[Step | None, list[Step]]:
    """(the lowest blocking load, the blocking loads whose ``/ping`` p99 is at least 3x that
    one's and at least 10 ms): where the tail has taken off."""
    blocking = sorted((s for s in steps if s.mode == "blocking"), key=lambda s: s.rate)
    if not blocking:
        return None, []
    base = blocking[0].p99(PING)
    return blocking[0], [s for s in blocking[1:] if s.p99(PING) >= max(3 * base, 0.010)]


def checks(steps: Sequence[Step]) -> list[Check]:
    _, high = took_off(steps)
    out = []
    for step in high:
        same_rate = [s for s in steps if s.mode == "executor" and s.rate == step.rate]
        executor = next((s for s in same_rate if s.threads == step.threads), None)
        out.append(Check(step, executor, [s for s in same_rate if s is not executor]))
    return out


def _executor_line(check: Check, step: Step) -> str:
    stalls = causes_text(step)
    return (
        f"  {mode_label(step.mode, step.threads)}: "
        f"{step.server.frozen_per_request(PING, CACHE) * 1e3:.2f} ms per /ping frozen by {CACHE} "
        f"({check.removed(step):.0%} of it removed), /ping p99 {ms(step.p99(PING), 0)} ms, "
        f"{CACHE} p99 {ms(step.p99(CACHE), 0)} ms; stalls: {stalls or 'none'}"
    )


def verdict(steps: Sequence[Step]) -> str:
    lowest, _ = took_off(steps)
    found = checks(steps)
    if lowest is None:
        return "VERDICT: not checked: blocking mode was not run."
    base = f"{ms(lowest.p99(PING), 0)} ms at {lowest.rate:g}/s"
    if not found:
        return (
            f"VERDICT: not shown: blocking mode's /ping p99 never reached 3x its {base} (and "
            "10 ms); offer more load (--rates) to find where the tail takes off."
        )
    lines = []
    for c in found:
        b = c.blocking
        lines.append(
            f"At {b.rate:g} cache req/s blocking mode's /ping p99 took off: "
            f"{ms(b.p99(PING), 0)} ms (vs {base}).\n"
            f"  {mode_label(b.mode, b.threads)}: stallwatch counts "
            f"{c.frozen_by_cache * 1e3:.1f} ms per /ping request frozen by {CACHE}, "
            f"{c.share:.0%} of its {ms(c.ping_server_mean, 0)} ms mean time in the server "
            f"(top culprit: {c.top_culprit})"
        )
        if c.executor is None:
            lines.append("  executor mode was not run on this demo at this load: not checked")
        else:
            lines.append(_executor_line(c, c.executor) + (" -> HOLDS" if c.holds else " -> FAILS"))
        lines += [_executor_line(c, other) + " (the pool-size trade-off)" for other in c.others]
    checked = [c for c in found if c.executor is not None]
    held = sum(c.holds for c in checked)
    outcome = "NOT CHECKED" if not checked else "HOLDS" if held == len(checked) else "FAILS"
    lines.append(
        f"VERDICT: {outcome} at {held} of {len(checked)} loads where the tail took off. Claim: "
        f"there, /ping's time is mostly (>= 50%) frozen time that stallwatch attributes to "
        f"{CACHE}, and executor mode removes >= 75% of it."
    )
    return "\n".join(lines)
