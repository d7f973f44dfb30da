"""How much of the server one request costs, so loads can be offered as a share of its loop.

The event loop is one thread, and in blocking mode a cache request holds it from start to
end: the loop serves cache requests one after another, each taking a fixed time ``D``. Its
capacity is ``1 / D`` cache requests per second, and a load is a share of that. The
calibration (``steps.calibrate`` runs it, in blocking mode) measures:

1. ``D``, by saturation: bursts of cache requests sent all at once. The loop serves them back
   to back, so the answers come out ``D`` apart, whatever the read, the HTTP parsing, the
   routing and stallwatch each cost; and the server's CPU seconds over the bursts
   (``process_cpu_seconds_total``), divided by the requests, say the same from the inside.
   On a machine shared with other work both can only come out too long (the server waits
   for a CPU), never too short, so ``D`` is the shorter of the fastest burst's spacing and
   the CPU per request: what a request costs the loop when the server has its CPU.
2. ``base``: the share of the loop taken by the steady traffic every step carries (``/items``
   and the ``/ping`` probe) and by the idle server (stallwatch's heartbeat, uvicorn's timers),
   from the server's CPU seconds over a run of that traffic alone.

Loads are thus shares of what the server can do with a whole CPU. Where neighbours take part
of it, the real load is higher than the figure printed, and the calibration says by how much
(``cpu_share``): the tail takes off sooner, never later, so the story still shows.

Utilization is then a straight line in the cache rate, and a target load is a rate.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Run:
    """The steady traffic alone: how long it lasted and the server CPU it used."""

    seconds: float
    cpu_seconds: float

    @property
    def busy(self) -> float:
        """The share of one CPU the server used."""
        return self.cpu_seconds / self.seconds


@dataclass(frozen=True, slots=True)
class Saturation:
    """Bursts of ``size`` cache requests sent at once, and the server CPU they used."""

    spans: tuple[float, ...]
    """Per burst, seconds from its first answer to its last."""
    size: int
    cpu_seconds: float

    @property
    def service(self) -> float:
        """Seconds between answers in the median burst: the loop's hold per cache request as
        the machine was while calibrating, neighbours included."""
        return statistics.median(self.spans) / (self.size - 1)

    @property
    def fastest(self) -> float:
        """Seconds between answers in the least disturbed burst."""
        return min(self.spans) / (self.size - 1)

    @property
    def cpu_per_request(self) -> float:
        return self.cpu_seconds / (len(self.spans) * self.size)


def service_span(completions: Sequence[float]) -> float:
    """First to last answer of a burst (the first answer waited for its own read only)."""
    return max(completions) - min(completions)


@dataclass(frozen=True, slots=True)
class Calibration:
    base: float
    """Share of the loop taken by the steady traffic and the idle server, without cache reads."""
    cache_cost: float
    """Seconds of loop one cache request takes: the service time ``D`` of the M/D/1 model."""
    cpu_share: float
    """The share of a CPU the server got in the median burst: below 1 on a busy machine,
    where a load's real share of the loop is about its figure divided by this."""
    source: str
    """Where the CPU seconds came from, for the printout."""

    def utilization(self, cache_rate: float) -> float:
        return self.base + cache_rate * self.cache_cost

    def rate(self, utilization: float) -> float:
        """Cache requests per second that bring the loop to ``utilization`` (0.85 = 85 %)."""
        if utilization <= self.base:
            raise ValueError(
                f"a load of {utilization:.0%} is below the {self.base:.0%} that the steady "
                "traffic alone takes; ask for more, or lower --items-rate and --probe-rate"
            )
        return (utilization - self.base) / self.cache_cost

    @property
    def capacity(self) -> float:
        """Cache requests per second that fill the loop (100 %), on top of the steady traffic."""
        return (1 - self.base) / self.cache_cost


def fit(light: Run, saturation: Saturation, *, source: str) -> Calibration:
    """The calibration from the steady run and the bursts.

    CPU counters tick in hundredths of a second: the bursts last long enough that this is a
    few percent at most. With no CPU counter (``cpu_seconds`` 0) the bursts' spacing alone
    sets ``D`` and the server is taken to have had a whole CPU.
    """
    if saturation.size < 2 or not saturation.spans:
        raise ValueError("saturation needs bursts of at least two requests")
    if saturation.fastest <= 0:
        raise ValueError(
            f"the bursts' answers came out {saturation.fastest!r} s apart: nothing measured"
        )
    cpu = saturation.cpu_per_request
    cost = min(saturation.fastest, cpu) if cpu > 0 else saturation.fastest
    share = min(1.0, cpu / saturation.service) if cpu > 0 else 1.0
    return Calibration(base=min(light.busy, 0.95), cache_cost=cost, cpu_share=share, source=source)


STEADY_SHARE = 0.10
"""The most of the loop the steady traffic may take: on a slow server it is thinned to this,
so that even the lowest load is mostly cache reads and every load can be offered."""


def thinned(
    base: float, items_rate: float, probe_rate: float, cap: float = STEADY_SHARE
) -> tuple[float, float]:
    """Steady rates (``/items``, ``/ping``) that take about ``cap`` of the loop where the
    given ones take ``base``; unchanged when they already fit. The probe keeps at least
    20 requests a second, or its p99 would rest on a handful of samples."""
    if base <= cap:
        return items_rate, probe_rate
    factor = cap / base
    return max(items_rate * factor, min(items_rate, 10.0)), max(
        probe_rate * factor, min(probe_rate, 20.0)
    )


def burst_size(read_seconds: float, seconds: float = 0.3, low: int = 30, high: int = 200) -> int:
    """Requests per burst: enough to keep the loop busy for about ``seconds``."""
    if read_seconds <= 0:
        return low
    return max(low, min(high, round(seconds / read_seconds)))


def percent(text: str) -> list[float]:
    """``30,60,85`` -> ``[0.30, 0.60, 0.85]``; what ``--loads`` takes."""
    values = [float(v) / 100 for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"loads must be positive percentages, got {text!r}")
    return values
