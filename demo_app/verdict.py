"""Whether a sweep shows the demo's claim, decided from its steps alone (pure functions).

The claim: above some load, blocking mode's ``/ping`` tail takes off although ``/ping`` never
blocks; there, most of ``/ping``'s time in the server is frozen time that stallwatch charges
to ``/cache/{key}``; and executor mode, at the same load, removes most of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .report import CACHE, PING, Step, causes_text, mode_label, ms, pool_text, short_frame
from .scrape import StallLine

REFERENCE_LOAD = 0.60
"""The tail is measured against the calmest blocking step at or below this load: two light
loads rather than one, so that a neighbour's burst of work on a shared machine during the
very lowest step does not raise the bar for all the others."""
TAKEOFF_FACTOR = 3.0
"""A load's ``/ping`` p99 has taken off at this many times the reference's p99..."""
TAKEOFF_FLOOR = 0.010
"""...and at least this many seconds (a 1 ms baseline tripled is still nothing)."""
FROZEN_SHARE = 0.5
"""Where it took off, at least this share of ``/ping``'s server time is frozen by the cache."""
REMOVED = 0.75
"""Executor mode removes at least this share of that frozen time."""
READ_LINE = ("cache.py:", " in read_blocking")
"""How the read's line looks in a stall's top frame (``.../cache.py:154 in read_blocking``)."""


def names_the_read(line: StallLine) -> bool:
    return (
        line.culprit == CACHE and READ_LINE[0] in line.frame and line.frame.endswith(READ_LINE[1])
    )


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
    def line(self) -> StallLine | None:
        """The line most of blocking mode's blocking stalls (by time) were charged to."""
        blocking = [s for s in self.blocking.stall_lines if s.cause == "blocking"]
        return max(blocking, key=lambda s: s.seconds, default=None)

    @property
    def holds(self) -> bool:
        return (
            self.executor is not None
            and self.top_culprit == CACHE
            and self.share >= FROZEN_SHARE
            and self.removed(self.executor) >= REMOVED
        )


def took_off(steps: Sequence[Step]) -> tuple[Step | None, list[Step]]:
    """(the reference step, the heavier blocking loads where ``/ping``'s p99 has taken off)."""
    blocking = sorted((s for s in steps if s.mode == "blocking"), key=lambda s: s.rate)
    if not blocking:
        return None, []
    light = [s for s in blocking if s.utilization <= REFERENCE_LOAD] or blocking[:1]
    reference = min(light, key=lambda s: s.p99(PING))
    floor = max(TAKEOFF_FACTOR * reference.p99(PING), TAKEOFF_FLOOR)
    return reference, [s for s in blocking if s.rate > reference.rate and s.p99(PING) >= floor]


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
        + (f"; {pool_text(step)}" if step.server.pool_wait.count else "")
    )


def knee(lowest: Step, high: Sequence[Step]) -> str:
    """Where the tail took off, as a share of the loop, next to what the model says there."""
    first = min(high, key=lambda s: s.rate)
    theory = first.theory_p99
    model = (
        f"; M/D/1 predicts a p99 wait of {ms(theory, 0)} ms there" if not math.isnan(theory) else ""
    )
    return (
        f"Blocking mode's /ping tail took off at {first.utilization:.0%} of the loop "
        f"({first.rate:.0f} cache req/s): p99 {ms(first.p99(PING), 0)} ms against "
        f"{ms(lowest.p99(PING), 0)} ms at {lowest.utilization:.0%} ({lowest.rate:.0f}/s){model}."
    )


def verdict(steps: Sequence[Step]) -> str:
    lowest, high = took_off(steps)
    found = checks(steps)
    if lowest is None:
        return "VERDICT: not checked: blocking mode was not run."
    base = f"{ms(lowest.p99(PING), 0)} ms at {lowest.utilization:.0%} ({lowest.rate:.0f}/s)"
    if not found:
        return (
            f"VERDICT: not shown: blocking mode's /ping p99 never reached "
            f"{TAKEOFF_FACTOR:g}x its {base} (and {TAKEOFF_FLOOR * 1e3:g} ms); offer more load "
            "(--loads, --rates) to find where the tail takes off."
        )
    lines = [knee(lowest, high)]
    for c in found:
        b = c.blocking
        lines.append(
            f"At {b.utilization:.0%} ({b.rate:.0f} cache req/s), /ping p99 {ms(b.p99(PING), 0)} ms."
            f"\n  {mode_label(b.mode, b.threads)}: stallwatch counts "
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
    # A stall is a stretch past the threshold; at the lighter loads where the tail took off
    # there may be none, so the line is asked of the heaviest load that has blocking stalls.
    named = next((c.line for c in reversed(found) if c.line is not None), None)
    if named is None:
        lines.append("  no blocking stall was recorded where the tail took off: no line named")
    else:
        lines.append(
            f"  the line: stallwatch charges {named.count} blocking stalls "
            f"({named.seconds * 1e3:.0f} ms) to {named.culprit} at {short_frame(named.frame)}"
            + ("" if names_the_read(named) else " -- not the read's line")
        )
    line_ok = named is not None and names_the_read(named)
    outcome = (
        "NOT CHECKED" if not checked else "HOLDS" if held == len(checked) and line_ok else "FAILS"
    )
    lines.append(
        f"VERDICT: {outcome} at {held} of {len(checked)} loads where the tail took off. Claim: "
        f"there, /ping's time is mostly (>= {FROZEN_SHARE:.0%}) frozen time that stallwatch "
        f"attributes to {CACHE}, its blocking stalls name the read's line in read_blocking, "
        f"and executor mode removes >= {REMOVED:.0%} of that frozen time."
    )
    return "\n".join(lines)
