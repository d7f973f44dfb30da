"""The projects whose own suites ``run.py`` runs, pinned exactly, and how to run each one.

Everything version-like lives here, so that a bump is one line and a result names what it
ran. An sdist is the project's release as published (its ``tests/`` included); how its test
dependencies are declared differs per project, so each says how to install them, the way
its own CI does. Deselections must be identical in both runs and each carries its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Suite:
    """One project: its release, how to install its tests' needs, how to run them."""

    name: str
    version: str
    install: tuple[str, ...]
    """``pip install`` arguments, run inside the unpacked sdist (relative paths work)."""
    wrap: str
    """``apps``: wrap every app a TestClient/ASGITransport serves; ``tests``: run every
    asyncio test as a request (see ``wrap_plugin.py``)."""
    test_paths: tuple[str, ...] = ("tests",)
    deselect: tuple[tuple[str, str], ...] = ()
    """(node id, why) pairs deselected in both runs."""
    markers: tuple[str, str] | None = None
    """(``-m`` expression, why) applied to both runs."""
    timeout: int = 30
    """Per test, seconds (pytest-timeout): a hang fails that test, and only it, fast."""
    run_timeout: int = 600
    """The whole pytest process, seconds: past it the run is killed and counts as hung."""
    note: str = ""
    extra_args: tuple[str, ...] = field(default=())


HARNESS = ("pytest-timeout==2.4.0",)
"""Installed into every project's venv beside its own test dependencies (and stallwatch)."""

PIP = "pip>=25.1"
"""The first pip that installs PEP 735 dependency groups (``--group``), which FastAPI uses."""

SUITES: tuple[Suite, ...] = (
    Suite(
        name="starlette",
        version="0.47.3",
        # Its CI installs requirements.txt, which starts with `-e .[full]`.
        install=("-r", "requirements.txt"),
        wrap="apps",
        note="bare as root on CPython 3.11: 2 failed (file permission tests root bypasses)",
    ),
    Suite(
        name="fastapi",
        version="0.141.1",
        # Its CI: `uv sync --group tests --extra all`; the sdist ships no requirements files.
        install=("-e", ".[all]", "--group", "tests"),
        wrap="apps",
    ),
    Suite(
        name="anyio",
        version="4.9.0",
        install=("-e", ".[test]"),
        wrap="tests",
        markers=("not network", "needs the Internet (its own marker); CI reaches PyPI only"),
    ),
)


def by_name() -> dict[str, Suite]:
    return {suite.name: suite for suite in SUITES}
