"""The session of an active plugin: which test each stall counts against, the failures, the
JSON report and the terminal summary.

``StallwatchPlugin`` is registered by ``pytest_configure`` (``__init__.py``) on every run
and does nothing until it is asked for. It owns the per-test records (``TestStalls``), the
phase windows seen so far and the stalls not yet matched to one; every hook runs on pytest's
main thread. The loops and their monitors are ``loops.py``'s; the judgement and wording of
each stall are ``verdicts.py``'s.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ..events import StallEvent
from ..options import MonitorOptions
from ..profile import LoopProfile, held_longest_text, profile_view
from .loops import LoopWatcher, TestClientRoutes
from .verdicts import (
    DEFAULT_THRESHOLD,
    fails,
    failure_text,
    monitor_options,
    overlaps,
    parse_limit,
    stall_record,
    threshold_for,
)


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
        self.profile_top: int | None = config.getoption("stallwatch_profile")
        self.profile: LoopProfile | None = None
        if self.run_limit is not None or self.report_path is not None or self.profile_top:
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
        if self.profile_top:
            # One profile for the session, every loop's samples in it; two day-long buckets
            # cover any session (memory: one bucket's bounds, docs/profile.md).
            self.profile = LoopProfile(
                period=1.0 / MonitorOptions().profile_rate, span=2 * 86_400.0, bucket=86_400.0
            )
            self.watcher.profile = self.profile
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
        if self.profile is not None and self.profile_top:
            view = profile_view(self.profile.snapshot())
            rows = held_longest_text(view, self.profile_top)
            terminalreporter.write_line(
                f"stallwatch: the lines that held the loop longest ({view['samples']} samples "
                f"of the busy loop at {view['rate']:g}/s, all loops):"
                if rows
                else "stallwatch: no line held the loop long enough to be sampled"
            )
            for row in rows:
                terminalreporter.write_line(row)

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
