"""What the timeline knows of a busy stretch: the requests it reads (``SpanBook``), the record
of a stall's stretch (``Stretch``), and who held the stretch in progress (``Holders``).

Loop thread only, like the timeline that owns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..decisions import Waiter, victims


class SpanBook(Protocol):
    """What the timeline keeps of a request (``request.spans.RequestSpan`` is one).

    The fields are the timeline's: only its methods below write them. They live on the
    request's record, not in a map here, because the loop thread reads them on every step.
    """

    start: float
    """When the request's life began (perf_counter), as ``origin()`` said."""
    base_seq: int
    base: dict[str, float]
    base_less: dict[str, float]
    busy: float
    longest: float
    own_long: float
    stretch_id: int
    stretch_time: float
    folded: float
    """Seconds of ``stretch_time`` already added to the stretch's holders."""
    done: bool
    ended: float
    ended_in: int
    trace: object
    """The request's OpenTelemetry server span, or None; the timeline only hands it on."""

    @property
    def route(self) -> str | None:
        """The request's name once fixed (``route_label`` fixes it), else None: what the
        watchdog's profile reads from its thread, where no resolver may run."""

    def route_label(self) -> str: ...

    def victim_label(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Stretch:
    """A busy stretch at least as long as the stall threshold, as the loop saw it end."""

    start: float  # perf_counter
    end: float
    duration: float
    holders: dict[str, float]  # culprit -> seconds it held the loop in this stretch
    victims: dict[str, int]  # route -> requests it froze
    frozen: dict[str, float]  # route -> seconds those requests waited in it, together
    thread_cpu: float  # thread_time() of the loop thread at the end
    process_cpu: float  # process_time() at the end
    allowed: bool = False
    traces: dict[str, object] = field(default_factory=dict)
    """Per holder route, the ``trace`` of its request that held the loop longest in it
    (traced requests only): the culprit's may have ended before the stall is recorded."""
    trace: object = None
    """The stall's own span context, once the monitor has started its span."""


class Holders:
    """Who held the loop in the stretch in progress, folded as requests need it.

    ``ran`` lists the spans whose steps ran in the stretch (a span again if it ran after a
    fold); each carries how much of its time in the stretch is folded already (``folded``).
    So every finishing request folds only what is new: the cost stays linear in the steps of
    a stretch, however many requests end inside it.
    """

    __slots__ = ("_cursor", "held", "holders", "ran")

    def __init__(self) -> None:
        self.ran: list[SpanBook] = []
        self.holders: dict[str, float] = {}
        """Route -> seconds its steps held the loop in the stretch, as of the last fold."""
        self.held = 0.0
        self._cursor = 0

    def fold(self) -> None:
        """Add the steps run since the last fold to the stretch's holders."""
        ran = self.ran
        holders = self.holders
        for i in range(self._cursor, len(ran)):
            span = ran[i]
            delta = span.stretch_time - span.folded
            if delta > 0.0:
                span.folded = span.stretch_time
                route = span.route_label()
                holders[route] = holders.get(route, 0.0) + delta
                self.held += delta
        self._cursor = len(ran)

    def reset(self) -> None:
        self.ran.clear()
        self._cursor = 0
        if self.holders:
            self.holders = {}
        self.held = 0.0

    def close(self) -> tuple[dict[str, float], float]:
        """The stretch ended long: its holders and the seconds they held, each span's time in
        it added to its ``own_long``; the next stretch starts afresh."""
        self.fold()
        holders, held = self.holders, self.held
        self.holders = {}  # the stretch keeps the folded dict
        for span in self.ran:
            # Once per span, though it may stand in ``ran`` twice: its time in this stretch
            # is read no more once the stretch is over (the next one starts it afresh).
            span.own_long += span.stretch_time
            span.stretch_time = 0.0
        self.reset()
        return holders, held

    def traces(self) -> dict[str, object]:
        """Per route, the ``trace`` of the traced request that held the loop longest in the
        stretch in progress (a loop over its steps: for stalls only)."""
        best: dict[str, tuple[float, object]] = {}
        for span in self.ran:
            trace = span.trace
            if trace is not None:
                route = span.route_label()
                known = best.get(route)
                if known is None or span.stretch_time > known[0]:
                    best[route] = (span.stretch_time, trace)
        return {route: trace for route, (_, trace) in best.items()}

    def victims(
        self, in_flight: set[SpanBook], sid: int, end: float, busy: float, floor: float
    ) -> tuple[dict[str, int], dict[str, float]]:
        """Who a stall froze: the requests in flight at its end, and those that ended in it
        (they ran in it, so they stand in ``ran``); not tasks of requests that ended before."""
        start = end - busy
        waiters = []
        seen: set[SpanBook] = set()
        for span in (*in_flight, *self.ran):
            if span in seen:
                continue
            seen.add(span)
            if span.done:
                if span.ended_in != sid:
                    continue
                until = span.ended
            else:
                until = end
            held = span.stretch_time if span.stretch_id == sid else 0.0
            alive = until - max(start, span.start)
            waiters.append(Waiter(span.victim_label(), held, alive))
        return victims(waiters, busy, floor)
