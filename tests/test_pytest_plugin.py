"""The pytest plugin, run on real test suites in a fresh pytest process each (pytester).

Every inner suite blocks a real loop with ``time.sleep(0.2)`` against a 50 ms limit: a wide
margin both ways on a loaded machine (a stall is never shorter than the sleep, and a test
that does not block stays far below 50 ms).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    ignore::DeprecationWarning
    ignore:Using `httpx` with `starlette.testclient`
"""

APP = """
import asyncio
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import stallwatch

app = FastAPI()


@app.get("/block")
async def block() -> dict[str, bool]:
    time.sleep(0.2)  # the blocking line
    return {"ok": True}


@app.get("/fine")
async def fine() -> dict[str, bool]:
    await asyncio.sleep(0.01)
    return {"ok": True}


@app.get("/expected")
async def expected() -> dict[str, bool]:
    with stallwatch.allow_blocking():
        time.sleep(0.2)
    return {"ok": True}
"""

CONFTEST = """
import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
"""

RUN = (
    "-p",
    "no:cacheprovider",
    "-p",
    "stallwatch",
    "-p",
    "pytest_asyncio.plugin",
    "-p",
    "anyio.pytest_plugin",
)
"""Only the plugins these suites use, by entry-point name: autoloading every installed one
costs seconds per run."""
SLEEP_MS = 200.0
LIMIT = "50"


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of the file at ``path`` containing ``needle``."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


def stall_ms(output: str, where: str) -> float:
    """The duration the failure message gives for the stall at ``where``."""
    found = re.search(rf"stalled for ([0-9.]+) ms \(blocking\) at {re.escape(where)}", output)
    assert found is not None, f"no stall at {where} in:\n{output}"
    return float(found.group(1))


@pytest.fixture(autouse=True)
def only_named_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(app_under_test=APP)
    pytester.makeconftest(CONFTEST)
    return pytester


TESTCLIENT_TESTS = """
import asyncio
import threading

from fastapi.testclient import TestClient

from app_under_test import app


def test_block() -> None:
    assert TestClient(app).get("/block").status_code == 200


def test_fine() -> None:
    with TestClient(app) as client:
        assert client.get("/fine").status_code == 200
"""


ASYNC_TESTS = """
import asyncio
import time

import pytest


@pytest.mark.asyncio
async def test_asyncio_block() -> None:
    await asyncio.sleep(0)
    time.sleep(0.2)  # asyncio blocks here


@pytest.mark.anyio
async def test_anyio_block() -> None:
    await asyncio.sleep(0)
    time.sleep(0.2)  # anyio blocks here


@pytest.mark.asyncio
async def test_asyncio_fine() -> None:
    await asyncio.sleep(0.05)
"""


UVLOOP_TESTS = """
import asyncio
import time

import uvloop


def test_uvloop_block() -> None:
    async def main() -> None:
        await asyncio.sleep(0)
        time.sleep(0.2)  # uvloop blocks here

    uvloop.run(main())
"""


def test_blocking_tests_fail_naming_their_line_and_the_tests_beside_them_pass(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(test_client=TESTCLIENT_TESTS, test_async=ASYNC_TESTS, test_uv=UVLOOP_TESTS)
    result = suite.runpytest_subprocess(*RUN, "--stallwatch-max-stall-ms", LIMIT)

    result.assert_outcomes(failed=4, passed=2)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_async.py::test_asyncio_block - stallwatch: *",
            "FAILED test_async.py::test_anyio_block - stallwatch: *",
            "FAILED test_client.py::test_block - stallwatch: *",
            "FAILED test_uv.py::test_uvloop_block - stallwatch: *",
        ]  # in this order; not consecutive: with CI set, pytest prints each one's stack too
    )
    # TestClient: the endpoint's line, the route that ran it, the stack down to the line.
    line = line_of(suite.path / "app_under_test.py", "# the blocking line")
    where = f"app_under_test.py:{line} in block"
    output = result.stdout.str()
    assert SLEEP_MS <= stall_ms(output, where) < 10 * SLEEP_MS
    result.stdout.fnmatch_lines(
        [
            "*_ test_block _*",
            f"stallwatch: event loop stalled for * ms (blocking) at {where}, culprit /block;"
            " limit 50 ms",
            "  ... * library frame(s) in *",
            f"  {where}",
            "    time.sleep(0.2)  # the blocking line",
        ]
    )
    # pytest-asyncio and anyio: the test's own line; uvloop (imported by the test module,
    # after the plugin hooked the loops): the coroutine's.
    for file, needle, function in [
        ("test_async.py", "# asyncio blocks here", "test_asyncio_block"),
        ("test_async.py", "# anyio blocks here", "test_anyio_block"),
        ("test_uv.py", "# uvloop blocks here", "main"),
    ]:
        where = f"{file}:{line_of(suite.path / file, needle)} in {function}"
        assert SLEEP_MS <= stall_ms(output, where) < 10 * SLEEP_MS


def test_without_the_option_the_plugin_does_nothing(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_async=ASYNC_TESTS,
        test_uv=UVLOOP_TESTS,
        test_client=TESTCLIENT_TESTS
        + """

def test_nothing_is_patched_and_no_thread_runs() -> None:
    events = asyncio.events
    originals = (getattr(events, "_c__set_running_loop", None), events._py__set_running_loop)
    assert events._set_running_loop in originals
    assert not [t.name for t in threading.enumerate() if t.name.startswith("stallwatch")]
""",
    )
    result = suite.runpytest_subprocess(*RUN)

    result.assert_outcomes(passed=7)
    assert "stallwatch:" not in result.stdout.str()


def test_the_marker_sets_a_limit_per_test(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_marked="""
import pytest
from fastapi.testclient import TestClient

from app_under_test import app


@pytest.mark.stallwatch(max_stall_ms=50)
def test_strict() -> None:
    TestClient(app).get("/block")


@pytest.mark.stallwatch(max_stall_ms=2000)
def test_lenient() -> None:
    TestClient(app).get("/block")


def test_unmarked() -> None:
    TestClient(app).get("/block")
"""
    )
    # No run-wide limit: only the marked tests have one, and only the strict one fails.
    result = suite.runpytest_subprocess(*RUN)
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(
        ["*_ test_strict _*", "stallwatch: event loop stalled for * ms *; limit 50 ms"]
    )
    result.stdout.fnmatch_lines(["FAILED test_marked.py::test_strict - stallwatch: *"])


EXPECTED_TESTS = """
import asyncio
import time

import pytest
import pytest_asyncio
from fastapi.testclient import TestClient

import stallwatch
from app_under_test import app


@pytest.mark.stallwatch(max_stall_ms=2000)
def test_lenient_marker() -> None:
    TestClient(app).get("/block")


@pytest.mark.allow_stall
def test_opted_out() -> None:
    TestClient(app).get("/block")


def test_allow_blocking_in_the_endpoint() -> None:
    TestClient(app).get("/expected")


@pytest.mark.asyncio
@stallwatch.allow_blocking()
async def test_allow_blocking_as_a_decorator() -> None:
    await asyncio.sleep(0)
    time.sleep(0.2)


def test_block() -> None:
    TestClient(app).get("/block")


@pytest_asyncio.fixture
async def slow_start() -> None:
    await asyncio.sleep(0)
    time.sleep(0.2)  # fixture blocks here


@pytest.mark.asyncio
async def test_with_a_blocking_fixture(slow_start: None) -> None:
    pass
"""


def test_allowed_stalls_stay_green_and_the_report_shows_them(
    suite: pytest.Pytester, tmp_path: Path
) -> None:
    suite.makepyfile(test_expected=EXPECTED_TESTS)
    report_path = tmp_path / "stalls.json"
    result = suite.runpytest_subprocess(
        *RUN,
        "--stallwatch-max-stall-ms",
        LIMIT,
        "--stallwatch-report",
        str(report_path),
    )

    # Under its marker's higher limit, opted out, allowed inside the endpoint, allowed as a
    # decorator: green. Not allowed: red, and a fixture's stall is an error at setup, as any
    # fixture failure is.
    result.assert_outcomes(passed=4, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "stallwatch: event loop stalled for * ms (blocking)"
            " at test_expected.py:* in slow_start during setup; limit 50 ms"
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "stallwatch: * stall(s) over * ms (2 allowed) on * loop(s);"
            f" 2 test(s) failed on a stall; report: {report_path}"
        ]
    )

    report = json.loads(report_path.read_text())
    assert report["limit_ms"] == 50.0
    assert report["stall_threshold_ms"] <= 25.0
    # Each test's sleep; a loaded machine may add short stalls of its own, never these.
    tests = {
        t["nodeid"].split("::")[1]: [s for s in t["stalls"] if s["duration_ms"] >= SLEEP_MS]
        for t in report["tests"]
    }
    assert {name for name, stalls in tests.items() if stalls} == {
        "test_lenient_marker",
        "test_opted_out",
        "test_allow_blocking_in_the_endpoint",
        "test_allow_blocking_as_a_decorator",
        "test_block",
        "test_with_a_blocking_fixture",
    }
    assert all(len(stalls) <= 1 for stalls in tests.values())
    totals = report["totals"]
    assert totals["stalls"] >= 6
    assert totals["allowed"] == 2
    assert totals["tests_failed"] == 2
    assert totals["failing"] == 2  # the failing test's and the fixture's
    assert totals["over_limit"] >= 5  # and the opted-out, allowed ones: over, not failing
    by_name = {t["nodeid"].split("::")[1]: t for t in report["tests"]}

    (stall,) = tests["test_opted_out"]
    assert by_name["test_opted_out"]["allow_stall"] is True
    assert by_name["test_opted_out"]["failed"] is False
    assert stall["phase"] == "call"
    assert stall["cause"] == "blocking"
    assert stall["culprit"] == "/block"
    line = line_of(suite.path / "app_under_test.py", "# the blocking line")
    assert stall["top_frame"] == f"app_under_test.py:{line} in block"
    assert stall["allowed"] is False
    assert stall["over_limit"] is True
    assert stall["fails"] is False
    assert stall["duration_ms"] < 10 * SLEEP_MS

    (lenient,) = tests["test_lenient_marker"]
    assert by_name["test_lenient_marker"]["limit_ms"] == 2000.0
    assert lenient["over_limit"] is False

    for name in ("test_allow_blocking_in_the_endpoint", "test_allow_blocking_as_a_decorator"):
        (allowed,) = tests[name]
        assert allowed["allowed"] is True
        assert allowed["fails"] is False
        assert by_name[name]["failed"] is False
    assert tests["test_allow_blocking_in_the_endpoint"][0]["culprit"] == "/expected"

    (setup,) = tests["test_with_a_blocking_fixture"]
    assert setup["phase"] == "setup"
    assert setup["fails"] is True
    fixture_line = line_of(suite.path / "test_expected.py", "# fixture blocks here")
    assert setup["top_frame"] == f"test_expected.py:{fixture_line} in slow_start"


def test_a_bad_limit_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
import pytest


@pytest.mark.stallwatch(max_stall_ms=-1)
def test_x() -> None:
    pass
"""
    )
    option = pytester.runpytest_subprocess(*RUN, "--stallwatch-max-stall-ms", "x")
    assert option.ret == pytest.ExitCode.USAGE_ERROR
    option.stderr.fnmatch_lines(["*--stallwatch-max-stall-ms must be a positive number*'x'*"])

    marker = pytester.runpytest_subprocess(*RUN)
    assert marker.ret == pytest.ExitCode.USAGE_ERROR
    marker.stderr.fnmatch_lines(["*test_x: stallwatch(max_stall_ms) must be a positive*-1*"])
