"""``LoopProfile``: samples of the busy loop thread counted by route and line, over minutes.

The watchdog adds one sample at a time (``add``), each already charged to a route and filed
under a location (``stacks.locate``). The profile keeps them in a ring of time buckets, as
``LoopHistory`` keeps the loop's lag, so that a reader asks for the last ``window`` seconds
and memory never depends on uptime or traffic. Every bucket is bounded on its own:

- at most ``ROUTES_PER_BUCKET`` routes; later ones count as ``(other routes)``;
- at most ``lines * KEEP_FACTOR`` lines per route and ``CELLS_PER_BUCKET`` (route, line) cells
  in all. A new line in a full route takes the place of the route's least sampled line,
  whose samples move to the route's ``(other lines)`` row (in a bucket full of other routes'
  lines, the new line's samples go there themselves). A bucket keeps more lines than a view
  shows, so that a line that is hot over the window is counted as itself in every bucket;
- at most ``STACKS_PER_LINE`` distinct stacks per line and ``STACKS_PER_BUCKET`` in all, each
  at most ``stacks.PROFILE_DEPTH`` frames; a sample whose stack is not kept still counts for
  its line (``unstacked``).

Equal stacks in different buckets share one tuple while the share table has room
(``SHARED_STACKS``). Frames are the sampler's interned ``Frame`` records. What a reader gets,
and how a route's counts are ranked into it, lives in ``records``.

Threads: ``add`` runs on the watchdog thread; ``snapshot`` on any (the report's server, the
loop itself). One lock guards the ring; ``add`` holds it for a few dict operations, and a
snapshot merges the buckets under it (a few milliseconds at the bounds), so the loop thread,
which never adds, never waits on it unless it serves the report.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from ..events import Frame
from .records import ProfileSnapshot, route_profile
from .stacks import OTHER_LINES, OTHER_ROUTES, Location

ROUTES_PER_BUCKET = 64
"""Routes a bucket counts apart. Routes are templates, a bounded set; this bounds an app
with hundreds of them (the rest are one row, not lost)."""
KEEP_FACTOR = 2
"""A bucket keeps up to this many times the lines a view shows per route."""
CELLS_PER_BUCKET = 256
"""(route, line) pairs a bucket counts apart, all routes together."""
STACKS_PER_LINE = 4
"""Distinct stacks a bucket keeps per line (a view shows the three most frequent)."""
STACKS_PER_BUCKET = 128
"""Distinct stacks a bucket keeps in all."""
SHARED_STACKS = 2048
"""Stacks shared between buckets; past that the table starts over (sharing is only a saving)."""


class _Cell:
    """The samples of one (route, line) in one bucket."""

    __slots__ = ("count", "stacks", "unstacked")

    def __init__(self) -> None:
        self.count = 0
        self.unstacked = 0
        self.stacks: dict[tuple[Frame, ...], int] | None = None  # made with the first stack


class _Bucket:
    __slots__ = ("cells", "epoch", "routes", "stacks")

    def __init__(self) -> None:
        self.epoch = -1
        self.routes: dict[str, dict[Location, _Cell]] = {}
        self.cells = 0
        self.stacks = 0

    def clear(self, epoch: int) -> None:
        self.epoch = epoch
        if self.routes:
            self.routes = {}
        self.cells = 0
        self.stacks = 0


class LoopProfile:
    """Counts of loop-thread samples per route and line over the last ``span`` seconds.

    ``period`` is the seconds of loop time one sample stands for (the sampler's interval);
    ``lines`` is how many lines a view shows per route before the ``(other lines)`` row.
    """

    def __init__(
        self,
        *,
        period: float,
        lines: int = 20,
        span: float = 300.0,
        bucket: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(period, (int, float)) or not 0 < period <= 1.0:
            raise ValueError(f"period must be more than 0 and at most 1 second, got {period!r}")
        if not isinstance(lines, int) or isinstance(lines, bool) or lines < 1:
            raise ValueError(f"lines must be a positive integer, got {lines!r}")
        if not isinstance(bucket, (int, float)) or not 0.01 <= bucket <= 86_400.0:
            raise ValueError(f"bucket must be 0.01 to 86400 seconds, got {bucket!r}")
        if not isinstance(span, (int, float)) or not bucket <= span <= 86_400.0 * 366:
            raise ValueError(f"span must be from one bucket to a year, got {span!r}")
        self.period = float(period)
        self.lines = lines
        self.span = float(span)
        self.bucket = float(bucket)
        self._clock = clock
        self._wall = wall
        self._size = math.ceil(self.span / self.bucket) + 1  # the window and the bucket in progress
        self._buckets = [_Bucket() for _ in range(self._size)]
        self._lock = threading.Lock()
        self._shared: dict[tuple[Frame, ...], tuple[Frame, ...]] = {}
        self._started = clock()
        self._epoch = math.floor(self._started / self.bucket)
        self._current = self._buckets[self._epoch % self._size]
        self._current.clear(self._epoch)
        self._next_at = (self._epoch + 1) * self.bucket
        self._line_cap = lines * KEEP_FACTOR

    # -- the writer (watchdog thread) ----------------------------------------------------------

    def add(
        self, route: str, location: Location, stack: tuple[Frame, ...] | None, count: int = 1
    ) -> None:
        """``count`` samples of ``route`` at ``location``, with their stack if one was read."""
        with self._lock:
            if self._clock() >= self._next_at:
                self._advance()
            bucket = self._current
            routes = bucket.routes
            lines = routes.get(route)
            if lines is None:
                if len(routes) >= ROUTES_PER_BUCKET:
                    route = OTHER_ROUTES
                    lines = routes.get(route)
                if lines is None:
                    lines = routes[route] = {}
            cell = lines.get(location)
            if cell is None:
                if len(lines) >= self._line_cap or bucket.cells >= CELLS_PER_BUCKET:
                    cell = self._evict(bucket, lines, location)
                    if cell is None:
                        stack = None
                        cell = self._other(bucket, lines)
                else:
                    cell = lines[location] = _Cell()
                    bucket.cells += 1
            cell.count += count
            if stack is None:
                cell.unstacked += count
                return
            stacks = cell.stacks
            if stacks is not None:
                seen = stacks.get(stack)
                if seen is not None:
                    stacks[stack] = seen + count
                    return
            if bucket.stacks < STACKS_PER_BUCKET and (
                stacks is None or len(stacks) < STACKS_PER_LINE
            ):
                if stacks is None:
                    stacks = cell.stacks = {}
                stacks[self._share(stack)] = count
                bucket.stacks += 1
            else:
                cell.unstacked += count

    @staticmethod
    def _other(bucket: _Bucket, lines: dict[Location, _Cell]) -> _Cell:
        cell = lines.get(OTHER_LINES)
        if cell is None:
            cell = lines[OTHER_LINES] = _Cell()
            bucket.cells += 1
        return cell

    def _evict(
        self, bucket: _Bucket, lines: dict[Location, _Cell], location: Location
    ) -> _Cell | None:
        """Make room for ``location`` in a full route: the route's least sampled line goes
        into its ``(other lines)`` row, counts and all, so a line that turns hot late (in a
        long bucket) is still counted as itself, and no sample is lost. None when the route
        has no line to give up (the bucket is full of other routes' lines)."""
        least: Location | None = None
        fewest = 0
        for known, cell in lines.items():
            if known != OTHER_LINES and (least is None or cell.count < fewest):
                least, fewest = known, cell.count
        if least is None:
            return None
        gone = lines.pop(least)
        bucket.stacks -= len(gone.stacks or ())
        other = self._other(bucket, lines)  # the bucket's cells: one gone, at most one made
        other.count += gone.count
        other.unstacked += gone.count
        cell = lines[location] = _Cell()
        return cell

    def _share(self, stack: tuple[Frame, ...]) -> tuple[Frame, ...]:
        shared = self._shared.get(stack)
        if shared is None:
            if len(self._shared) >= SHARED_STACKS:
                self._shared = {}
            shared = self._shared[stack] = stack
        return shared

    def _advance(self) -> None:
        """Move to the bucket of now, emptying every bucket skipped since the last write
        (under the lock)."""
        epoch = math.floor(self._clock() / self.bucket)
        first = max(self._epoch + 1, epoch - self._size + 1)
        for e in range(first, epoch + 1):
            self._buckets[e % self._size].clear(e)
        self._epoch = epoch
        self._current = self._buckets[epoch % self._size]
        self._next_at = (epoch + 1) * self.bucket

    # -- the reader (any thread) ------------------------------------------------------------

    def snapshot(self, window: float | None = None) -> ProfileSnapshot:
        """The last ``window`` seconds (default and at most ``span``), merged."""
        if window is None:
            window = self.span
        if not isinstance(window, (int, float)) or isinstance(window, bool) or window <= 0:
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        count = max(1, math.ceil(min(float(window), self.span) / self.bucket))
        merged: dict[str, dict[Location, _Cell]] = {}
        with self._lock:
            now = self._clock()
            wall_now = self._wall()
            last = max(math.floor(now / self.bucket), self._epoch)
            first = last - count + 1
            for e in range(first, last + 1):
                bucket = self._buckets[e % self._size]
                if bucket.epoch != e:
                    continue
                for route, lines in bucket.routes.items():
                    into = merged.setdefault(route, {})
                    for location, cell in lines.items():
                        total = into.get(location)
                        if total is None:
                            total = into[location] = _Cell()
                        total.count += cell.count
                        total.unstacked += cell.unstacked
                        if cell.stacks:
                            into_stacks = total.stacks
                            if into_stacks is None:
                                into_stacks = total.stacks = {}
                            for stack, n in cell.stacks.items():
                                into_stacks[stack] = into_stacks.get(stack, 0) + n
        covered = max(now - max(first * self.bucket, self._started), 1e-9)
        routes = [route_profile(route, lines, self.lines) for route, lines in merged.items()]
        routes.sort(key=lambda r: (-r.samples, r.route))
        return ProfileSnapshot(
            window=count * self.bucket,
            covered=covered,
            period=self.period,
            samples=sum(r.samples for r in routes),
            routes=tuple(routes),
            now=wall_now,
        )
