"""The demo's front page, ``GET /``: what the demo is, its live mode with a button to flip
it, and links to everything it serves. One self-contained HTML file (``front.html``): no
CDN, no framework, so it works offline and on a locked-down host."""

from __future__ import annotations

import functools
import html
import sys
from pathlib import Path

from .cache import MODES, SqliteCache


@functools.cache
def template() -> str:
    """Read once, on the first visit: not on every request's path."""
    return Path(__file__).with_name("front.html").read_text(encoding="utf-8")


def front_page(
    *, mode: str, cache: SqliteCache, report_path: str, base_url: str, package: str
) -> str:
    """The page for the current mode. ``base_url`` comes from the request's Host header, so
    everything put in the page is escaped."""
    other = next(m for m in MODES if m != mode)
    plural = "s" if cache.executor_threads > 1 else ""
    values = {
        "mode": mode,
        "other": other,
        "seed_rows": f"{cache.seed_rows:,}",
        "read_ms": f"{cache.read_seconds * 1e3:.1f}",
        "threads": f"{cache.executor_threads} thread{plural}",
        "report_path": report_path,
        "report_href": report_path.lstrip("/") + "/",
        "load_command": f"{sys.executable} -m {package}.load --url {base_url}",
    }
    page = template()
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", html.escape(value))
    return page
