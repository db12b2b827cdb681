"""The real ``streamlit run`` server in headless Debian Chromium (Selenium + chromedriver).

Every page is opened as a person would (its URL), the test waits for Streamlit to finish
running, asserts that no exception element is shown and that the page's key elements are
there, and saves a screenshot under ``FW_SCREENSHOT_DIR`` (default: pytest's tmp dir) so a
human can look at what an on-call engineer sees. CI installs ``chromium`` and
``chromium-driver`` (Debian); without them the test is skipped locally and fails under CI.
"""

from __future__ import annotations

import os
import shutil
import time
from decimal import Decimal
from pathlib import Path

import pytest

from models.db import make_engine
from models.migrations import upgrade
from tests.dashboard.live_site import (
    chromium,
    elements,
    free_port,
    start_dashboard,
    stop_dashboard,
)
from tests.dashboard.seed import build_world, seed, seed_budget, seed_runs, utc_now_minute

#: page path → text that must be on it once it has rendered.
PAGES = {
    "overview": ["Overview", "Requests", "Per deployment", "Worst in the last hour"],
    "deployment": ["Deployment", "p95 latency", "Latency of successful requests"],
    "errors": ["Errors & throttling", "Per deployment", "Top error minutes", "What to check"],
    "spend": [
        "Spend",
        "Reconciliation gap",
        "Budgets: month to date and forecast",
        "Budget alerts in this range",
    ],
    "lookup": ["Request lookup", "request-id or apim-request-id", "Search Log Analytics live"],
    "health": [
        "Collector health",
        "Freshness per source",
        "Last run per source and scope",
        "Operational alerts",
        "Failed alert deliveries",
    ],
}


@pytest.fixture(scope="module")
def browser():
    driver = chromium(window="1600,2200")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A seeded SQLite store and ``streamlit run`` on a free localhost port."""
    folder = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{folder / 'store.db'}"
    engine = make_engine(url)
    upgrade(engine)
    now = utc_now_minute()
    world = build_world(now, 8, per_deployment=600, old_days=12)
    seed(engine, world)
    seed_runs(engine, now, stale={"costs"})
    seed_budget(engine, Decimal("400"))
    engine.dispose()
    port = free_port()
    proc = start_dashboard(folder, url, port)
    base = f"http://127.0.0.1:{port}"
    yield base, world
    stop_dashboard(proc)


def _wait_rendered(driver, texts: list[str], timeout: float = 60) -> str:
    """Wait until Streamlit stops running and every text is on the page; return the text."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    body = ""
    while time.time() < deadline:
        running = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        body = driver.find_element(By.TAG_NAME, "body").text
        if not running and all(t in body for t in texts):
            time.sleep(1.0)  # let charts finish drawing before the screenshot
            return driver.find_element(By.TAG_NAME, "body").text
        time.sleep(0.5)
    missing = [t for t in texts if t not in body]
    raise AssertionError(f"page did not render {missing}; body starts: {body[:600]!r}")


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("FW_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("page", list(PAGES))
def test_page_renders_in_chromium(browser, server, shots, page) -> None:
    from selenium.webdriver.common.by import By

    base, _world = server
    browser.get(base if page == "overview" else f"{base}/{page}")
    body = _wait_rendered(browser, PAGES[page])
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), body[:2000]
    assert "Traceback" not in body
    # the freshness banner warns about the stale costs source on every page
    assert "Data may be out of date" in body and "costs" in body
    assert "Page not found" not in body
    if page in ("overview", "errors", "deployment", "spend"):
        assert elements(browser, ".js-plotly-plot"), "no Plotly chart"
    if page in ("overview", "errors", "spend", "health"):
        assert elements(browser, '[data-testid="stDataFrame"]')
    browser.save_screenshot(str(shots / f"{page}.png"))


def test_lookup_finds_a_request_in_chromium(browser, server, shots) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, world = server
    target = next(r for r in reversed(world.requests) if r.status == 429)
    browser.get(f"{base}/lookup")
    _wait_rendered(browser, PAGES["lookup"])
    box = browser.find_element(By.CSS_SELECTOR, '[data-testid="stTextInput"] input')
    box.send_keys(target.correlation_id, Keys.ENTER)
    body = _wait_rendered(browser, ["Support bundle", target.request_id, "Capacity"])
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert f"apim-request-id: {target.correlation_id}" in body
    browser.save_screenshot(str(shots / "lookup_found.png"))


def test_screenshots_are_kept(shots) -> None:
    """Runs last in this module: the screenshots exist and are real PNGs."""
    if not list(shots.glob("*.png")):
        pytest.skip("no screenshots (browser tests skipped)")
    for png in shots.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 10_000
    assert shutil.which  # keep import used
