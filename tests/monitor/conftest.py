"""The blockers, calibrated once per module, and the guard that no watchdog outlives a test."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests import blockers
from tests.blockers import Block, Kind, NativeSum, SlowQuery
from tests.monitor.support import Prepare, watchdog_threads

# -- the blockers, calibrated once -----------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_query(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowQuery]:
    query = SlowQuery(tmp_path_factory.mktemp("sqlite") / "slow.db")
    yield query
    query.close()


@pytest.fixture(scope="module")
def prepare(slow_query: SlowQuery) -> Prepare:
    """A blocker of each kind for a target length; call it a loop step before the block."""
    native = NativeSum()

    def prepared(kind: Kind, seconds: float) -> Callable[[], Block]:
        if kind == "sleep":
            return lambda: blockers.sleep(seconds)
        if kind == "cpu":
            return lambda: blockers.spin(seconds)
        if kind == "sqlite":
            return slow_query.prepare(seconds)
        return native.prepare(seconds)

    return prepared


@pytest.fixture(autouse=True)
def no_watchdog_left_behind() -> Iterator[None]:
    """Every test must leave no watchdog thread running, whatever it did."""
    yield
    deadline = time.monotonic() + 2.0
    while watchdog_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watchdog_threads() == []
