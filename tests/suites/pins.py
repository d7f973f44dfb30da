"""The projects whose own suites ``run.py`` runs, pinned exactly, and how to run each one.

Everything version-like lives here, so that a bump is one line and a result names what it
ran. An sdist is the project's release as published (its ``tests/`` included); how its test
dependencies are declared differs per project, so each says how to install them, the way
its own CI does. Deselections apply to both runs alike and each carries its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

ANYIO = "4.9.0"
STARLETTE = "0.47.3"
FASTAPI = "0.141.1"

HARNESS = ("pytest-timeout==2.4.0",)
"""Installed into every project's venv beside its own test dependencies (and stallwatch)."""

PIP = "pip>=25.1"
"""The first pip that installs PEP 735 dependency groups (``--group``), which FastAPI uses."""


@dataclass(frozen=True, kw_only=True)
class Suite:
    """One project: its release, how to install its tests' needs, how to run them."""

    name: str
    version: str
    install: tuple[str, ...]
    """``pip install`` arguments, run inside the unpacked sdist (relative paths work)."""
    wrap: str
    """``apps``: wrap every app a TestClient/ASGITransport serves; ``tests``: run every
    asyncio test as a request (``wrap_plugin.py`` says how and why)."""
    pinned: tuple[str, ...] = ()
    """Requirements pinned beside them: the stack the release was made on. Newer releases
    deprecate what an older one imports, and these suites turn warnings into errors."""
    test_paths: tuple[str, ...] = ("tests",)
    deselect: tuple[tuple[str, str], ...] = ()
    """(node id, why) pairs deselected in both runs."""
    markers: tuple[str, str] | None = None
    """(``-m`` expression, why) applied to both runs."""
    needs_ipv6_localhost: str | None = None
    """A ``-k`` expression of the tests that need ``localhost`` to resolve to ``::1``:
    deselected in both runs where it does not (containers whose /etc/hosts lack it), where
    they fail bare, and leak sockets whose ResourceWarning lands on whichever test the
    garbage collector happens to run in."""
    extra_args: tuple[str, ...] = ()
    timeout: int = 30
    """Per test, seconds (pytest-timeout): a hang fails that test, and only it, fast."""
    run_timeout: int = 600
    """The whole pytest process, seconds: past it the run is killed and counts as hung."""


SUITES: tuple[Suite, ...] = (
    Suite(
        name="starlette",
        version=STARLETTE,
        # Its CI installs requirements.txt, which starts with `-e .[full]`.
        # Bare as root it fails its two file permission tests (root reads anything).
        install=("-r", "requirements.txt"),
        # anyio 4.10+ deprecates `anyio.abc.BlockingPortal`, which its TestClient imports
        # (an error under its filterwarnings = error): the pinned anyio, of its time.
        pinned=(f"anyio=={ANYIO}",),
        wrap="apps",
        timeout=10,  # its slowest test takes well under a second
    ),
    Suite(
        name="fastapi",
        version=FASTAPI,
        # Its CI: `uv sync --group tests --extra all`; the sdist ships no requirements files.
        install=("-e", ".[all]", "--group", "tests"),
        # Released 2026-07-29, when the newest Starlette was 1.3.1, anyio 4.14.2, pytest
        # 9.1.1. With Starlette 1.10 its test_frontend_dependency_restores_existing_
        # dependency_stacks hangs bare; pytest 9.2 deprecates what that anyio's plugin imports.
        pinned=("starlette==1.3.1", "anyio==4.14.2", "pytest==9.1.1"),
        wrap="apps",
        timeout=20,  # its own pytest config's
    ),
    Suite(
        name="anyio",
        version=ANYIO,
        install=("-e", ".[test]"),
        # Released 2025-03-17, when the newest pytest was 8.3.5 and trio 0.29.0: pytest 9
        # fails its class-scoped fixtures, and its test extra caps neither.
        pinned=("pytest==8.3.5", "trio==0.29.0"),
        wrap="tests",
        markers=("not network", "needs the Internet (its own marker); CI reaches PyPI only"),
        deselect=(
            (
                "tests/test_sockets.py::TestTCPStream::test_unretrieved_future_exception_server_crash",
                "runs gc.collect() on the loop (~200 ms in a full run) and asserts that nothing "
                "at all is logged meanwhile: stallwatch's stall warning reports exactly that "
                "pause, as it should (the one difference wrapped, by design)",
            ),
            (
                "tests/test_from_thread.py::TestBlockingPortal::test_raise_baseexception_from_task",
                "races in this anyio itself: the BaseException stops the portal's loop while "
                "the test's thread sends it portal.stop, which then waits forever. It hung once "
                "wrapped in a fresh-clone CI run; on two busy cores, 25 runs each way, it hung "
                "once bare and once wrapped (no stallwatch on that loop: the test is synchronous)",
            ),
        ),
        needs_ipv6_localhost=(
            "(ipv6 and not ipv6_disabled) or dualstack or (test_connection_refused and multi)"
        ),
    ),
)


def by_name() -> dict[str, Suite]:
    return {suite.name: suite for suite in SUITES}
