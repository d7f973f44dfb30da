"""What queueing theory predicts for the blocking demo: the M/D/1 queue.

In blocking mode the event loop is a single server that takes requests one at a time, and a
cache request keeps it for a fixed time ``D`` (the read plus its handling). With Poisson
arrivals that is the M/D/1 queue, solved exactly by Erlang (1909). For a load ``rho`` (the
fraction of the time the loop is busy), the time a request waits before the loop gets to it:

- its mean is ``rho * D / (2 * (1 - rho))``: it grows like ``1 / (1 - rho)``, so it is small
  up to about 60 % and explodes near 100 %: the knee is physics, not noise;
- its distribution is ``P(W <= t) = (1 - rho) * sum_{k=0}^{floor(t/D)} (a_k^k / k!) * e^(-a_k)``
  with ``a_k = rho * (k - t / D)`` (Crommelin's form of Erlang's result).

Poisson arrivals see the queue as it is on average (PASTA), so ``/ping``, probed as a Poisson
stream, waits exactly this ``W``. The sum alternates in sign with terms as large as
``e^(2 * rho * t / D)``, so it is computed in ``Decimal`` with enough digits to cancel exactly.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

HEAVY_TRAFFIC = 0.99
"""Above this load ``wait_quantile`` uses the exponential heavy-traffic form, not the sum."""


def mean_wait(rho: float, service: float) -> float:
    """Mean wait in the M/D/1 queue (Pollaczek-Khinchine); infinite at or above full load."""
    if rho >= 1:
        return math.inf
    return rho * service / (2 * (1 - rho)) if rho > 0 else 0.0


def wait_cdf(t: float, rho: float, service: float) -> float:
    """``P(W <= t)`` in the M/D/1 queue with load ``rho`` and service time ``service``."""
    if rho >= 1:
        return 0.0
    if t < 0:
        return 0.0
    if rho <= 0:
        return 1.0
    x = t / service
    with localcontext() as ctx:
        # A term is at most e^(2 * rho * x) (its power is at most e^(rho * x) times its
        # exponential): digits for that, plus 30 that survive the cancellation.
        ctx.prec = 30 + int(2 * rho * x / math.log(10))
        r = Decimal(rho)
        dx = Decimal(x)
        # e^(-a_k) = e^(rho * x) * e^(-rho)^k: two exponentials per call, not one per term.
        growth = (r * dx).exp()
        shrink = (-r).exp()
        total = Decimal(0)
        factorial = Decimal(1)
        for k in range(math.floor(x) + 1):
            if k:
                factorial *= k
                growth *= shrink
            power = (r * (k - dx)) ** k if k else Decimal(1)  # Decimal refuses 0 ** 0
            total += power / factorial * growth
        value = float((1 - r) * total)
    return min(1.0, max(0.0, value))


def wait_quantile(q: float, rho: float, service: float) -> float:
    """The ``q`` quantile of the wait (0 when at least ``q`` of requests do not wait at all)."""
    if not 0 < q < 1:
        raise ValueError(f"q must be strictly between 0 and 1, got {q!r}")
    if rho >= 1:
        return math.inf
    if wait_cdf(0.0, rho, service) >= q:
        return 0.0
    if rho > HEAVY_TRAFFIC:
        # Near full load the wait is all but exponential (Kingman) with the mean above and an
        # atom of 1 - rho at zero; the exact sum would need thousands of terms of thousands of
        # digits. At 99 % the two agree within 1 %.
        return mean_wait(rho, service) * math.log(rho / (1 - q))
    high = service
    while wait_cdf(high, rho, service) < q:
        high *= 2
    low = 0.0
    # Bisection to a thousandth of the service time: far finer than any latency we print.
    while high - low > service * 1e-3:
        middle = (low + high) / 2
        if wait_cdf(middle, rho, service) < q:
            low = middle
        else:
            high = middle
    return high


def fifo_waits(arrivals: list[float], service: float) -> list[float]:
    """Each arrival's wait in one FIFO queue with a fixed service time (Lindley's recursion):
    the queue the formulas above describe, to check them against."""
    waits = []
    free_at = 0.0
    for arrival in arrivals:
        start = max(arrival, free_at)
        waits.append(start - arrival)
        free_at = start + service
    return waits
