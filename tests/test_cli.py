"""``stallwatch``, the console script: run as a user runs it, against a real demo service.

The demo (blocking mode, with the report on) gets a few bounded concurrent requests, then
``stallwatch report`` must name its blocking line first, as a table and as JSON; against a
closed port or a refusing service it must exit 2 with one line on stderr and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.report_app import demo_blocking_line, loaded_demo
from tests.servers import ROOT, free_port, uvicorn

SCRIPT = Path(sys.executable).with_name("stallwatch")


def stallwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-c", _ENTRY]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
    )


_ENTRY = "import sys; from stallwatch.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    with loaded_demo() as base:
        yield base


def test_report_prints_the_top_offenders_as_a_table(demo: str) -> None:
    done = stallwatch("report", demo)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{demo}/_stallwatch/api/summary: ")
    header = lines[1].split()
    assert header[:2] == ["#", "location"]
    assert "total" in header
    assert "culprit" in header
    assert "victims" in header
    first = lines[2]
    # Run from the checkout, the location is relative to it: shorter to read.
    assert first.split()[1:4] == demo_blocking_line().split()
    assert "/cache/{key}" in first


def test_report_json_is_the_summary_cut_to_top(demo: str) -> None:
    done = stallwatch("report", demo + "/", "--json", "--top", "1")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["url"] == f"{demo}/_stallwatch/api/summary"
    assert data["stalls"] >= 5
    [top] = data["groups"]
    assert top["location"].endswith(demo_blocking_line())
    assert top["culprit"] == "/cache/{key}"
    assert top["count"] >= 3
    assert top["total_seconds"] >= top["max_seconds"] > 0.005


def test_a_closed_port_exits_2_with_one_line() -> None:
    port = free_port()  # nothing listens there once the probe socket is closed
    done = stallwatch("report", f"http://127.0.0.1:{port}")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("stallwatch: cannot reach ")
    assert "connection refused" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_refusal_or_a_wrong_path_exits_2_with_a_hint(demo: str) -> None:
    missing = stallwatch("report", demo, "--path", "/elsewhere")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
    assert "404" in missing.stderr
    assert "--path" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_token_goes_as_a_bearer_header() -> None:
    env = {"SW_REPORT_TOKEN": "tok-123"}
    with uvicorn("tests.apps.report_app:app", env=env, ready_path="/ping") as base:
        refused = stallwatch("report", base)
        assert refused.returncode == 2
        assert "401" in refused.stderr
        assert "--token" in refused.stderr
        assert stallwatch("report", base, "--token", "tok-123").returncode == 0
        from_env = stallwatch("report", base, env={"STALLWATCH_REPORT_TOKEN": "tok-123"})
        assert from_env.returncode == 0
        assert "no stalls recorded" in from_env.stdout


def test_help_version_and_usage_errors() -> None:
    version = stallwatch("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("stallwatch ")
    helped = stallwatch("report", "--help")
    assert helped.returncode == 0
    assert "--token" in helped.stdout
    assert "Exit status" in helped.stdout
    for args in ((), ("report",), ("report", "x", "--top", "0"), ("nonsense",)):
        done = stallwatch(*args)
        assert done.returncode == 2, args
        assert done.stderr.startswith("usage: stallwatch"), args


def test_demo_passes_its_arguments_to_the_demo() -> None:
    helped = stallwatch("demo", "--help")
    assert helped.returncode == 0
    assert "--mode" in helped.stdout
    assert "--seed-rows" in helped.stdout
