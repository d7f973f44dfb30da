"""The report page in a real browser: headless Chromium against the demo in blocking mode.

The demo gets a few bounded concurrent requests; the page, opened as a developer opens it,
must render from its own JSON (no external request, its strict CSP respected), put the demo's
blocking line first among the offenders, expand its stack on a click, and draw the lag chart.
Set ``STALLWATCH_SCREENSHOT=docs/report.png`` to keep the screenshot it takes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.apps.report_app import demo_blocking_line, loaded_demo
from tests.browser import chromium
from tests.servers import ROOT


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium(
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--window-size=1400,1500",
        console=True,
    ) as driver:
        yield driver


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    with loaded_demo() as base:
        yield base


def test_the_page_names_the_demos_blocking_line_first(browser: WebDriver, demo: str) -> None:
    browser.get(f"{demo}/_stallwatch")  # without the slash: redirected to the page
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
    assert browser.current_url == f"{demo}/_stallwatch/"
    assert browser.title.startswith("stallwatch")

    rows = browser.find_elements(By.CSS_SELECTOR, "#offenders tbody tr")
    assert rows, "no offenders shown"
    top = rows[0]
    assert (top.get_attribute("data-location") or "").endswith(demo_blocking_line())
    assert "/cache/{key}" in top.text
    assert browser.find_element(By.ID, "offenders-empty").is_displayed() is False
    assert browser.find_element(By.ID, "c-top").text.endswith(demo_blocking_line())

    # A click on the location opens its stack, the blocking line highlighted last.
    top.find_element(By.CSS_SELECTOR, "details summary").click()
    stack = top.find_element(By.CSS_SELECTOR, "div.stack")
    assert stack.is_displayed()
    assert stack.find_element(By.TAG_NAME, "b").text.endswith(demo_blocking_line())
    assert "in get_cache" in stack.text

    # The chart has its p99 line, the threshold and the stall dots; the tables have rows.
    chart = browser.find_element(By.ID, "chart")
    assert chart.find_element(By.TAG_NAME, "path").get_attribute("d")
    assert chart.find_elements(By.TAG_NAME, "circle"), "no stall marked on the chart"
    routes = browser.find_elements(By.CSS_SELECTOR, "#routes tbody tr")
    assert any("/cache/{key}" in r.text for r in routes)
    frozen = browser.find_element(By.ID, "frozen")
    assert "/ping" in frozen.text
    causes = browser.find_elements(By.CSS_SELECTOR, "#causes tbody tr")
    assert causes
    assert browser.find_elements(By.CSS_SELECTOR, "#recent tbody tr")
    assert browser.find_element(By.ID, "status").text == "watching the loop"

    # It refreshes itself, and a refresh keeps the opened stack open.
    loads = int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") or 0)
    wait.until(
        lambda d: int(d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") or 0) > loads
    )
    opened = browser.find_elements(By.CSS_SELECTOR, "#offenders tbody tr:first-child details")
    assert opened[0].get_attribute("open") is not None

    # Nothing was blocked by the page's CSP or fetched from elsewhere: no console errors.
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources
    assert all(url.startswith(demo + "/_stallwatch/api/") for url in resources), resources

    shot = os.environ.get("STALLWATCH_SCREENSHOT")
    target = Path(shot) if shot else Path(tempfile.mkdtemp()) / "report.png"
    if not target.is_absolute():
        target = ROOT / target
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(900, int(height) + 40))
    assert browser.save_screenshot(str(target))
    assert target.stat().st_size > 20_000
