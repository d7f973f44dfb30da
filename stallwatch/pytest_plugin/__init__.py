"""pytest plugin: fail a test whose event loop stalled past a limit, naming the line.

Inactive unless asked (``--stallwatch-max-stall-ms``, the ``stallwatch_max_stall_ms`` ini
option, ``--stallwatch-report`` or a ``stallwatch`` marker in the run): until then it only
registers its options and markers, and patches nothing. Once active, every asyncio loop that
starts running gets a monitor (``loops.py``), on a registry of the plugin's own. Stalls are
matched to a test by time (``session.py``): a stall that overlaps a phase (setup, call,
teardown) of a test counts against that test's limit (``verdicts.py`` decides and words it).

This module is the entry point (``pytest11``): the options, the markers, and registering the
session's plugin.
"""

from __future__ import annotations

import pytest

from .session import StallwatchPlugin

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
    group.addoption(
        "--stallwatch-profile",
        dest="stallwatch_profile",
        metavar="N",
        nargs="?",
        const=10,
        type=int,
        default=None,
        help="print the N lines (default 10) that held the event loop longest in the session",
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
