"""pytest plugin: fail a test whose event loop stalled past a limit, naming the line.

Inactive unless asked (``--stallwatch-max-stall-ms``, the ``stallwatch_max_stall_ms`` ini
option, ``--stallwatch-report`` or a ``stallwatch`` marker in the run): until then it only
registers its options and markers, and patches nothing. Once active it wraps asyncio's
running-loop hook (``asyncio.events._set_running_loop``, which ``run_forever`` looks up at
call time on 3.10-3.14) so that every asyncio loop that starts running, on any thread (the
test's, a Starlette ``TestClient`` portal, anyio's runner), gets a ``LoopMonitor`` of its
own, on its own registry. Stalls are matched to a test by time: a stall that overlaps a
phase (setup, call, teardown) of a test counts against that test's limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import linecache
import logging
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from . import BACKGROUND, Frame, LoopMonitor, StallEvent, StallwatchMiddleware, get_monitor

logger = logging.getLogger("stallwatch")

DEFAULT_THRESHOLD = 0.020
"""Stalls shorter than this are not recorded, unless a limit in the run is lower."""
SETTLE_TIMEOUT = 1.0
"""How long a test's report waits for the watchdogs to turn ended stalls into events."""
FAILING_CAUSES = frozenset({"blocking", "gil"})
"""Code on the loop held it. ``starvation`` (a loaded CI machine, other threads) and ``gc``
are reported, never failed on: they are not the line the stack names."""
_DISPATCH = ("events.py", "base_events.py", "runners.py")
_SELF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")
_STDLIB = tuple(os.path.join(sysconfig.get_paths()[key], "") for key in ("stdlib", "platstdlib"))


# -- decisions (pure) ------------------------------------------------------------------------


def parse_limit(value: object, where: str) -> float:
    """A limit in milliseconds, as seconds; ``where`` names the option or marker on error."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise pytest.UsageError(f"{where} must be a positive number of ms, got {value!r}")
    return float(value) / 1e3


def threshold_for(limits: Sequence[float]) -> float:
    """Record stalls from half the smallest limit, so the report shows near misses too."""
    return max(0.001, min([DEFAULT_THRESHOLD, *(limit / 2 for limit in limits)]))


def monitor_options(threshold: float, registry: CollectorRegistry) -> dict[str, Any]:
    return {
        "stall_threshold": threshold,
        "floor": min(0.001, threshold),
        "sample_interval": max(0.0005, min(0.005, threshold / 4)),
        "history": 1000,  # per loop, between two test phases
        "registry": registry,
    }


def overlaps(event: StallEvent, start: float, stop: float) -> bool:
    return event.started_at <= stop and event.started_at + event.duration >= start


def is_allowed(event: StallEvent) -> bool:
    return bool(getattr(event, "allowed", False))


def fails(event: StallEvent, limit: float) -> bool:
    """Whether a stall fails a test whose limit is ``limit`` (``allow_stall`` aside)."""
    return event.duration > limit and event.cause in FAILING_CAUSES and not is_allowed(event)


def relative(filename: str, root: Path) -> str:
    try:
        return os.path.relpath(filename, root) if filename.startswith(str(root)) else filename
    except ValueError:  # another drive (Windows)
        return filename


def where(frame: Frame | None, root: Path) -> str:
    if frame is None:
        return "no stack sampled"
    return f"{relative(frame.filename, root)}:{frame.lineno} in {frame.function}"


def _library(filename: str) -> str | None:
    """The package a library frame belongs to (site-packages or stdlib), None for user code."""
    if filename.startswith("<"):
        return "<frozen>"
    if filename.startswith(_SELF):
        return "stallwatch"
    for marker in ("site-packages", "dist-packages"):
        _, found, rest = filename.partition(f"{os.sep}{marker}{os.sep}")
        if found:
            return rest.split(os.sep, 1)[0]
    for root in _STDLIB:
        if filename.startswith(root):
            return filename[len(root) :].split(os.sep, 1)[0].removesuffix(".py")
    return None


def stack_lines(event: StallEvent, root: Path) -> list[str]:
    """The most frequent stack, innermost last, from the callback the loop was running.

    Library frames outside the top user frame are folded into one line per run (the
    framework's middleware layers); from the top user frame inward every frame is shown.
    """
    if not event.stacks:
        return [f"  (no stack sampled: cause {event.cause})"]
    frames = list(event.stacks[0].frames)
    for i in range(len(frames) - 1, -1, -1):
        if _library(frames[i].filename) == "asyncio" and (
            os.path.basename(frames[i].filename) in _DISPATCH
        ):
            frames = frames[i + 1 :]  # the loop's own machinery and whoever started it
            break
    top = event.top_frame
    inner = max((i for i, f in enumerate(frames) if f == top), default=len(frames) - 10)
    lines: list[str] = []
    folded: list[str] = []
    for i, f in enumerate(frames):
        package = _library(f.filename)
        if i < inner and package is not None:
            folded.append(package)
            continue
        if folded:
            names = ", ".join(dict.fromkeys(folded))
            lines.append(f"  ... {len(folded)} library frame(s) in {names}")
            folded = []
        lines.append(f"  {where(f, root)}")
        source = linecache.getline(f.filename, f.lineno).strip()
        if source:
            lines.append(f"    {source}")
    return lines


def describe(event: StallEvent, limit: float, root: Path, phase: str) -> str:
    culprit = f", culprit {event.culprit}" if event.culprit != BACKGROUND else ""
    during = "" if phase == "call" else f" during {phase}"
    return (
        f"stallwatch: event loop stalled for {event.duration * 1e3:.1f} ms ({event.cause}) "
        f"at {where(event.top_frame, root)}{culprit}{during}; limit {limit * 1e3:g} ms"
    )


def failure_text(over: Sequence[StallEvent], limit: float, root: Path, phase: str) -> str:
    worst = max(over, key=lambda e: e.duration)
    lines = [describe(worst, limit, root, phase), *stack_lines(worst, root)]
    others = [e for e in over if e is not worst]
    if others:
        lines.append(f"and {len(others)} more stall(s) over the limit:")
        lines.extend("  " + describe(e, limit, root, phase) for e in others)
    return "\n".join(lines)


def stall_record(
    event: StallEvent, phase: str, limit: float | None, root: Path, *, opted_out: bool = False
) -> dict[str, Any]:
    """One stall in the JSON report; ``fails``: it failed (or would fail) its test."""
    started_by = getattr(event, "started_by", None)
    return {
        "phase": phase,
        "started_at": event.started_at,
        "duration_ms": round(event.duration * 1e3, 3),
        "cause": event.cause,
        "culprit": event.culprit,
        "top_frame": where(event.top_frame, root) if event.top_frame else None,
        "started_by": where(started_by, root) if started_by is not None else None,
        "allowed": is_allowed(event),
        "over_limit": limit is not None and event.duration > limit,
        "fails": limit is not None and not opted_out and fails(event, limit),
    }


# -- the loop hook ---------------------------------------------------------------------------


class LoopWatcher:
    """Starts a monitor on every asyncio loop that starts running, while installed."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._monitors: list[LoopMonitor] = []
        self._seen: dict[int, set[int]] = {}
        self._original: Callable[[asyncio.AbstractEventLoop | None], None] | None = None
        self._hooked: Callable[[asyncio.AbstractEventLoop | None], None] | None = None
        self.loops = 0
        self.errors = 0

    def install(self) -> None:
        original = asyncio.events._set_running_loop
        watcher = self

        def set_running_loop(loop: asyncio.AbstractEventLoop | None) -> None:
            original(loop)
            if loop is not None:
                watcher.loop_started(loop)

        self._original, self._hooked = original, set_running_loop
        # base_events looks the hook up on asyncio.events at each run; uvloop binds the one
        # on the asyncio package when it is imported, so a uvloop imported later is covered.
        for module in (asyncio.events, asyncio):
            if vars(module).get("_set_running_loop") is original:
                vars(module)["_set_running_loop"] = set_running_loop

    def uninstall(self) -> None:
        for module in (asyncio.events, asyncio):
            if vars(module).get("_set_running_loop") is self._hooked:
                vars(module)["_set_running_loop"] = self._original
        self._original = None
        with self._lock:
            monitors, self._monitors = self._monitors, []
        for monitor in monitors:
            monitor.stop()

    def loop_started(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop's thread, inside ``run_forever``; must never raise into it."""
        try:
            if get_monitor(loop) is not None:
                return  # ours from an earlier run, or the app's own
            monitor = LoopMonitor(loop, **self.options)
            if monitor.start():
                _lock_drain(monitor)
                with self._lock:
                    self._monitors.append(monitor)
                    self.loops += 1
        except Exception:
            self.errors += 1
            if self.errors == 1:
                logger.exception("stallwatch: could not watch loop %r (counted, not raised)", loop)

    def harvest(self, timeout: float = SETTLE_TIMEOUT) -> list[StallEvent]:
        """Stalls recorded since the last harvest, once the watchdogs have caught up."""
        deadline = time.monotonic() + timeout
        with self._lock:
            monitors = list(self._monitors)
        fresh: list[StallEvent] = []
        for monitor in monitors:
            settle(monitor, deadline)
            seen = self._seen.setdefault(id(monitor), set())
            for event in monitor.recent_stalls():
                if id(event) not in seen:  # harvested events stay referenced: ids stay unique
                    seen.add(id(event))
                    fresh.append(event)
            if not monitor.running:
                with self._lock:
                    self._monitors.remove(monitor)
                del self._seen[id(monitor)]
        fresh.sort(key=lambda e: e.started_at)
        return fresh


def settle(monitor: LoopMonitor, deadline: float) -> None:
    """Wait until the monitor's watchdog has recorded every stall that has ended."""
    public = getattr(monitor, "settle", None)
    if callable(public):
        public(max(0.0, deadline - time.monotonic()))
        return
    watchdog = getattr(monitor, "_watchdog", None)
    ended = getattr(watchdog, "_ended", None)
    lock = getattr(watchdog, "_stallwatch_pytest_lock", None)
    if watchdog is None or ended is None or lock is None:
        return
    while ended and time.monotonic() < deadline and watchdog.thread.is_alive():
        time.sleep(0.001)
    if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        lock.release()


def _lock_drain(monitor: LoopMonitor) -> None:
    """Until the monitor has a public ``settle``: put a lock around the watchdog step that
    drains its queue of ended stretches, so that a stretch popped but not yet recorded is
    waited for. Done right after ``start()``, before the first stall can end."""
    if callable(getattr(monitor, "settle", None)):
        return
    watchdog: Any = getattr(monitor, "_watchdog", None)
    drain = getattr(watchdog, "_finish_ended", None)
    if drain is None or not hasattr(watchdog, "_ended"):
        return
    lock = threading.Lock()

    def locked_drain() -> None:
        with lock:
            drain()

    watchdog._stallwatch_pytest_lock = lock
    watchdog._finish_ended = locked_drain


class TestClientRoutes:
    """Names the culprit route of a stall inside a Starlette/FastAPI ``TestClient``.

    The monitor knows routes only through ``StallwatchMiddleware``. An app that does not
    mount it gets one (on the plugin's registry) between ``TestClient`` and the app, in the
    client's transport, so ``client.app`` stays the user's app. Starlette's transport is
    private: if it is not there as expected, nothing is patched and culprits stay
    ``<background>``.
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._transport: Any = None
        self._original: Any = None

    def install(self) -> None:
        # Only a TestClient the tests have imported already (collection imported them):
        # importing it here would warn (httpx deprecation) and cost every other suite.
        testclient = sys.modules.get("starlette.testclient")
        transport = getattr(testclient, "_TestClientTransport", None)
        original = getattr(transport, "__init__", None)
        if transport is None or original is None:
            return
        wrap = self.wrap

        def init(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
            original(self, wrap(app), *args, **kwargs)

        self._transport, self._original = transport, original
        transport.__init__ = init

    def uninstall(self) -> None:
        if self._transport is not None:
            self._transport.__init__ = self._original
            self._transport = None

    def wrap(self, app: Any) -> Any:
        try:
            if isinstance(app, StallwatchMiddleware) or any(
                getattr(m, "cls", None) is StallwatchMiddleware
                for m in getattr(app, "user_middleware", ())
            ):
                return app  # the app names its routes already
            return StallwatchMiddleware(app, **self._options)
        except Exception:
            logger.exception("stallwatch: could not name TestClient routes (not raised)")
            return app


# -- the plugin --------------------------------------------------------------------------------


@dataclass(slots=True)
class TestStalls:
    nodeid: str
    limit: float | None
    allow_stall: bool
    stalls: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False


class StallwatchPlugin:
    """Registered on every run; does nothing until ``activate`` finds it was asked for."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.root = Path(config.rootpath)
        self.run_limit = _run_limit(config)
        report = config.getoption("stallwatch_report")
        self.report_path = Path(report) if report else None
        self.watcher: LoopWatcher | None = None
        self.routes: TestClientRoutes | None = None
        self.threshold = DEFAULT_THRESHOLD
        self.tests: dict[str, TestStalls] = {}
        self.windows: list[tuple[float, float, str, str]] = []  # start, stop, nodeid, phase
        self.pending: list[StallEvent] = []
        self.outside: list[dict[str, Any]] = []
        self.registry = CollectorRegistry()  # never the user's default registry
        if self.run_limit is not None or self.report_path is not None:
            self.threshold = threshold_for([] if self.run_limit is None else [self.run_limit])
            self._watch()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        limits: list[float] = [] if self.run_limit is None else [self.run_limit]
        marked = False
        for item in items:
            marker = item.get_closest_marker("stallwatch")
            limit = self.run_limit
            if marker is not None:
                marked = True
                if marker.args or set(marker.kwargs) - {"max_stall_ms"}:
                    raise pytest.UsageError(
                        f"{item.nodeid}: use @pytest.mark.stallwatch(max_stall_ms=N)"
                    )
                if "max_stall_ms" in marker.kwargs:
                    limit = parse_limit(
                        marker.kwargs["max_stall_ms"], f"{item.nodeid}: stallwatch(max_stall_ms)"
                    )
                    limits.append(limit)
            allow = item.get_closest_marker("allow_stall") is not None
            self.tests[item.nodeid] = TestStalls(item.nodeid, limit, allow)
        if self.watcher is None and marked:
            self._watch()
        if self.watcher is not None:
            # Loops start running with the tests: the threshold can still follow the markers.
            self.threshold = threshold_for(limits)
            self.watcher.options.update(monitor_options(self.threshold, self.registry))
            self.routes = TestClientRoutes(
                {"registry": self.registry, "stall_threshold": self.threshold, "floor": 0.001}
            )
            self.routes.install()

    def _watch(self) -> None:
        """Hook the loops now: from configure when an option asks (so that a uvloop the tests
        import is covered), else once collection has found a marker."""
        self.watcher = LoopWatcher(monitor_options(self.threshold, self.registry))
        self.watcher.install()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        outcome = yield
        if self.watcher is None:
            return
        report: pytest.TestReport = outcome.get_result()
        test = self.tests.get(item.nodeid)
        if test is None:
            test = self.tests[item.nodeid] = TestStalls(item.nodeid, self.run_limit, False)
        self.windows.append((call.start, call.stop, item.nodeid, call.when))
        mine = self._attribute(self.watcher.harvest(), call.start, call.stop)
        for event in mine:
            test.stalls.append(self._record(test, event, call.when))
        limit = test.limit
        if limit is None or test.allow_stall:
            return
        over = [e for e in mine if fails(e, limit)]
        if not over:
            return
        text = failure_text(over, limit, self.root, call.when)
        test.failed = True
        if report.passed and not hasattr(report, "wasxfail"):
            report.outcome = "failed"
            report.longrepr = text
        else:
            report.sections.append(("stallwatch", text))

    def _attribute(self, fresh: list[StallEvent], start: float, stop: float) -> list[StallEvent]:
        """This phase's stalls; earlier ones go to the test they overlapped, or outside."""
        mine: list[StallEvent] = []
        later: list[StallEvent] = []
        for event in [*self.pending, *fresh]:
            if overlaps(event, start, stop):
                mine.append(event)
            elif event.started_at > stop:
                later.append(event)  # from a loop still running: the next phase may own it
            else:
                self._late(event)
        self.pending = later
        return mine

    def _late(self, event: StallEvent) -> None:
        for start, stop, nodeid, phase in reversed(self.windows[:-1]):
            if overlaps(event, start, stop):
                test = self.tests[nodeid]
                test.stalls.append(self._record(test, event, phase))
                return
        self.outside.append(stall_record(event, "outside", self.run_limit, self.root))

    def _record(self, test: TestStalls, event: StallEvent, phase: str) -> dict[str, Any]:
        return stall_record(event, phase, test.limit, self.root, opted_out=test.allow_stall)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.watcher is None:
            return
        for event in [*self.pending, *self.watcher.harvest()]:
            self._late(event)
        self.pending = []
        path = self.report_path
        if path is not None:
            worker = getattr(self.config, "workerinput", {}).get("workerid")
            if worker:  # pytest-xdist: one file per worker, beside the one asked for
                path = path.with_name(f"{path.stem}-{worker}{path.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.report(), indent=2) + "\n")

    def report(self) -> dict[str, Any]:
        tests = [t for t in self.tests.values() if t.stalls]
        stalls = [s for t in tests for s in t.stalls] + self.outside
        return {
            "version": 1,
            "limit_ms": None if self.run_limit is None else self.run_limit * 1e3,
            "stall_threshold_ms": self.threshold * 1e3,
            "totals": {
                "tests_watched": len(self.tests),
                "tests_with_stalls": len(tests),
                "tests_failed": sum(t.failed for t in tests),
                "loops_watched": self.watcher.loops if self.watcher else 0,
                "stalls": len(stalls),
                "allowed": sum(s["allowed"] for s in stalls),
                "over_limit": sum(s["over_limit"] for s in stalls),
                "failing": sum(s["fails"] for s in stalls),
                "stall_ms": round(sum(s["duration_ms"] for s in stalls), 3),
            },
            "tests": [
                {
                    "nodeid": t.nodeid,
                    "limit_ms": None if t.limit is None else t.limit * 1e3,
                    "allow_stall": t.allow_stall,
                    "failed": t.failed,
                    "stalls": t.stalls,
                }
                for t in tests
            ],
            "outside_tests": self.outside,
        }

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.watcher is None:
            return
        totals = self.report()["totals"]
        line = (
            f"stallwatch: {totals['stalls']} stall(s) over {self.threshold * 1e3:g} ms "
            f"({totals['allowed']} allowed) on {totals['loops_watched']} loop(s); "
            f"{totals['tests_failed']} test(s) failed on a stall"
        )
        if self.report_path is not None:
            line += f"; report: {self.report_path}"
        terminalreporter.write_line(line)

    def close(self) -> None:
        if self.routes is not None:
            self.routes.uninstall()
        if self.watcher is not None:
            self.watcher.uninstall()


def _run_limit(config: pytest.Config) -> float | None:
    value = config.getoption("stallwatch_max_stall_ms")
    if value is not None:
        return parse_limit(value, "--stallwatch-max-stall-ms")
    ini = config.getini("stallwatch_max_stall_ms")
    return parse_limit(ini, "stallwatch_max_stall_ms (ini)") if ini else None


_PLUGIN = "stallwatch-plugin"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stallwatch", "event-loop stalls (stallwatch)")
    group.addoption(
        "--stallwatch-max-stall-ms",
        dest="stallwatch_max_stall_ms",
        metavar="MS",
        default=None,
        help="fail any test during which an asyncio loop stalled longer than MS milliseconds",
    )
    group.addoption(
        "--stallwatch-report",
        dest="stallwatch_report",
        metavar="FILE",
        default=None,
        help="write every stall seen, per test, to FILE as JSON at the end of the run",
    )
    parser.addini(
        "stallwatch_max_stall_ms",
        "default for --stallwatch-max-stall-ms (milliseconds)",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "stallwatch(max_stall_ms=N): fail this test if an asyncio loop stalls longer than N ms",
    )
    config.addinivalue_line(
        "markers", "allow_stall: report this test's event-loop stalls but never fail on them"
    )
    config.pluginmanager.register(StallwatchPlugin(config), _PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.pluginmanager.get_plugin(_PLUGIN)
    if isinstance(plugin, StallwatchPlugin):
        plugin.close()
        config.pluginmanager.unregister(plugin, _PLUGIN)
