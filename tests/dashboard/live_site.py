"""The real dashboard for the browser tests: ``streamlit run`` on a free localhost port, and
headless Chromium driven by Selenium through Debian's ``chromium-driver``."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from collector.cli import streamlit_command

CHROMIUM = os.environ.get("FW_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FW_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(window: str = "1600,1400") -> Any:
    """A headless Chromium; skipped where it is not installed, a failure under CI."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        reason = f"missing {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser test cannot run under CI: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={window}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


def elements(driver: Any, css: str, timeout: float = 30) -> list:
    """The elements matching ``css`` once there are any (a table's or chart's frame is drawn a
    moment after the text around it, later still on a loaded machine); [] after ``timeout``."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while not (found := driver.find_elements(By.CSS_SELECTOR, css)) and time.time() < deadline:
        time.sleep(0.3)
    return found


def start_dashboard(
    folder: Path, database_url: str, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``streamlit run`` with ``folder`` as working directory (so ``folder/.streamlit`` is the
    project-level config) and as HOME (so no ``~/.streamlit/secrets.toml`` leaks in); returns
    once its health endpoint answers. The app path is absolute and the store comes from
    ``DATABASE_URL``, as under the CLI. The log is ``folder/streamlit.log``."""
    env = {**os.environ, "DATABASE_URL": database_url, "HOME": str(folder), **(extra_env or {})}
    log = open(folder / "streamlit.log", "w")  # noqa: SIM115 (closed by stop_dashboard)
    proc = subprocess.Popen(
        streamlit_command("127.0.0.1", port),
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log = log  # type: ignore[attr-defined]
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    stop_dashboard(proc)
    pytest.fail("streamlit did not start: " + (folder / "streamlit.log").read_text()[-2000:])


def stop_dashboard(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    proc.log.close()  # type: ignore[attr-defined]
