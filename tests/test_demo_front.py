"""The demo's front page, ``GET /``, served by real uvicorn: what the demo is, its live mode
with a button that flips it through the toggle endpoint, and links that all answer.
The button is clicked in a real headless Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx
import pytest

from demo_app.cache import SqliteCache
from demo_app.front import front_page
from tests.browser import chromium
from tests.servers import uvicorn


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    with uvicorn(
        "demo_app.app:app",
        args=["--loop", "asyncio"],
        env={"DEMO_MODE": "blocking", "DEMO_SEED_ROWS": "2000", "DEMO_EXECUTOR_THREADS": "2"},
        ready_path="/demo/mode",
    ) as base:
        yield base


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and found.get("href"):
            self.hrefs.append(str(found["href"]))
        for name in ("src", "href"):
            value = found.get(name) or ""
            if tag in ("script", "link", "img") and value.startswith(("http:", "https:", "//")):
                self.external.append(value)


def page(base: str) -> httpx.Response:
    return httpx.get(base + "/", timeout=10)


def set_mode(base: str, mode: str) -> None:
    assert httpx.post(base + "/demo/mode", json={"mode": mode}, timeout=10).status_code == 200


def test_the_front_page_says_what_the_demo_is_and_shows_the_live_mode(demo: str) -> None:
    set_mode(demo, "blocking")

    response = page(demo)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    text = response.text
    assert "<title>stallwatch demo</title>" in text
    assert "2,000 SQLite rows" in text
    assert "pool of\n2 threads" in text or "pool of 2 threads" in text.replace("\n", " ")
    assert 'data-mode="blocking">blocking</span>' in text
    assert re.search(r'data-next="executor">Switch to executor mode</button>', text)
    assert "-m demo_app.load --url " + demo in text

    set_mode(demo, "executor")
    flipped = page(demo).text

    assert 'data-mode="executor">executor</span>' in flipped
    assert 'data-next="blocking">Switch to blocking mode</button>' in flipped
    set_mode(demo, "blocking")


def test_every_link_on_the_front_page_answers_and_nothing_comes_from_elsewhere(demo: str) -> None:
    parser = Links()
    parser.feed(page(demo).text)

    assert parser.external == []  # self-contained: no CDN
    assert {"metrics", "demo/stalls", "_stallwatch/", "ping", "cache/key-42"} <= set(parser.hrefs)
    for href in parser.hrefs:
        answer = httpx.get(f"{demo}/{href}", timeout=10)
        assert answer.status_code == 200, href
    assert "stallwatch_event_loop_lag_seconds" in httpx.get(demo + "/metrics", timeout=10).text
    assert "<html" in httpx.get(demo + "/_stallwatch/", timeout=10).text.lower()


def test_what_the_request_puts_in_the_page_is_escaped() -> None:
    # The load command shows the URL the page was asked for, from the Host header: the
    # client's to choose, so the page must not carry it as markup.
    cache = SqliteCache(seed_rows=10)
    page = front_page(
        mode="blocking",
        cache=cache,
        report_path="/_stallwatch",
        base_url='http://"><script>alert(1)</script>',
        package="demo_app",
    )

    assert "<script>alert(1)</script>" not in page
    assert "--url http://&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_demo_info_tells_the_load_generator_what_it_calibrates_from(demo: str) -> None:
    info = httpx.get(demo + "/demo/info", timeout=10).json()

    assert info["mode"] in ("blocking", "executor")
    assert info["seed_rows"] == 2000
    assert info["executor_threads"] == 2
    assert 0 < info["read_seconds"] < 1
    assert info["report_path"] == "/_stallwatch"


@pytest.fixture
def browser() -> Iterator[object]:
    with chromium() as driver:
        yield driver


def test_the_button_flips_the_mode_through_the_toggle_endpoint(demo: str, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.wait import WebDriverWait

    assert isinstance(browser, WebDriver)
    set_mode(demo, "blocking")
    browser.get(demo + "/")
    wait = WebDriverWait(browser, 20)
    button = browser.find_element(By.ID, "toggle")
    assert browser.find_element(By.ID, "mode").text == "blocking"

    button.click()

    wait.until(ec.text_to_be_present_in_element((By.ID, "mode"), "executor"))
    assert httpx.get(demo + "/demo/mode", timeout=10).json() == {"mode": "executor"}
    assert button.text == "Switch to blocking mode"
    assert "now in executor mode" in browser.find_element(By.ID, "status").text

    button.click()

    wait.until(ec.text_to_be_present_in_element((By.ID, "mode"), "blocking"))
    assert httpx.get(demo + "/demo/mode", timeout=10).json() == {"mode": "blocking"}
    assert button.text == "Switch to executor mode"
