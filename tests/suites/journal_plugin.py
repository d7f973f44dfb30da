"""pytest plugin: a journal of each test's start and results, so a killed run can go on.

A test that hangs inside Starlette's ``TestClient`` cannot be failed in place: pytest-timeout's
``signal`` method raises into the test once, and the client's clean-up then waits forever
on the portal thread the hung request holds. So ``run.py`` uses the ``thread`` method, which
ends the whole process at the hung test (junit XML unwritten), and resumes: this journal
says which tests finished (and how) and which one was running, and the next run of the same
suite deselects all of them (``--journal-skip``). ``run.py`` loads it in both runs alike; it
writes a file and changes nothing else.

One JSON object a line: ``{"start": nodeid}`` when a test starts, ``{"id", "when",
"outcome", "report"}`` for each of its phases' reports (``report``: the end of a failure's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import pytest

REPORT_CHARS = 6000
"""The end of a failure's report is kept: enough for its innermost exception."""


class Journal:
    """Appends to the journal, flushed line by line (the process may end any moment)."""

    def __init__(self, path: Path, skip: set[str]) -> None:
        self.file: IO[str] = path.open("a", encoding="utf-8")
        self.skip = skip

    def write(self, entry: dict[str, Any]) -> None:
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[Any]) -> None:
        if not self.skip:
            return
        kept = [item for item in items if item.nodeid not in self.skip]
        gone = [item for item in items if item.nodeid in self.skip]
        if gone:
            config.hook.pytest_deselected(items=gone)
            items[:] = kept

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.write({"start": nodeid})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        text = "" if report.outcome == "passed" else report.longreprtext or ""
        self.write(
            {
                "id": report.nodeid,
                "when": report.when,
                "outcome": report.outcome,
                "report": text[-REPORT_CHARS:],
            }
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--journal", help="append each test's start and reports to this file")
    parser.addoption("--journal-skip", help="a file of node ids (one a line) to deselect")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("journal")
    if not path:
        return
    skip_file = config.getoption("journal_skip")
    skip: set[str] = set()
    if skip_file:
        skip = set(Path(skip_file).read_text(encoding="utf-8").splitlines()) - {""}
    config.pluginmanager.register(Journal(Path(path), skip), "stallwatch-suites-journal")


def pytest_unconfigure(config: pytest.Config) -> None:
    journal = config.pluginmanager.get_plugin("stallwatch-suites-journal")
    if isinstance(journal, Journal):
        journal.file.close()
