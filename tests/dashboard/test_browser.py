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
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from models.db import make_engine
from models.migrations import upgrade
from tests.dashboard.seed import build_world, seed, seed_budget, seed_runs, utc_now_minute

CHROMIUM = os.environ.get("FW_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FW_CHROMEDRIVER", "/usr/bin/chromedriver")
APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,2200",
]
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


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _browser_missing()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser test cannot run under CI: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": url}
    log = open(folder / "streamlit.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(APP),
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + (folder / "streamlit.log").read_text()[-2000:])
    yield base, world
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


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
        assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"), "no Plotly chart"
    if page in ("overview", "errors", "spend", "health"):
        assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
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
