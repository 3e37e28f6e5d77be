"""End to end in a real browser: `vitsearch ui` served locally, driven by headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import draw_album
from vitsearch import app
from vitsearch.config import load_settings

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "no chromium/chromedriver here (Debian: apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as when  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(home: Path, tiny_model: Path, tmp_path: Path):
    photos = draw_album(tmp_path / "album", 10)
    settings = load_settings(environ={}, home=home, model=str(tiny_model), threads=1)
    app.index_folders(settings, [tmp_path / "album"])
    port = free_port()
    env = {
        **os.environ,
        "VITSEARCH_HOME": str(home),
        "VITSEARCH_MODEL": str(tiny_model),
        "VITSEARCH_THREADS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "vitsearch", "ui", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, process)
        yield url, photos
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def browser(tmp_path: Path):
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_then_clusters_and_duplicates(server, browser, tmp_path: Path) -> None:
    url, photos = server
    # Streamlit re-renders while we look: a found element may go stale, so look again.
    wait = WebDriverWait(browser, 90, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(f"{url}/?page=Search")
    upload = wait.until(when.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    upload.send_keys(str(photos[4]))
    wait.until(when.text_to_be_present_in_element((By.TAG_NAME, "body"), "results"))
    wait.until(lambda driver: len(_result_images(driver)) >= 5)
    assert str(photos[4]) in browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(tmp_path / "search.png"))

    _choose_page(browser, wait, "Clusters")
    wait.until(lambda driver: driver.find_elements(By.XPATH, "//button[.//p[text()='Open']]"))
    browser.save_screenshot(str(tmp_path / "clusters.png"))

    _choose_page(browser, wait, "Duplicates")
    wait.until(when.text_to_be_present_in_element((By.TAG_NAME, "body"), "Similarity threshold"))
    browser.save_screenshot(str(tmp_path / "duplicates.png"))
    for name in ("search", "clusters", "duplicates"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def _choose_page(browser, wait, name: str) -> None:
    option = (By.XPATH, f"//label[@data-testid='stRadioOption'][.//p[text()='{name}']]")
    wait.until(lambda driver: _clicked(driver, option))
    wait.until(lambda driver: driver.find_elements(By.XPATH, f"//h2[contains(., '{name}')]"))


def _clicked(driver, locator) -> bool:
    """Click what ``locator`` finds; False (so the wait tries again) if a re-render staled it."""
    try:
        driver.find_element(*locator).click()
        return True
    except (StaleElementReferenceException, NoSuchElementException):
        return False


def _result_images(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img")


def _wait_until_serving(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"vitsearch ui exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("vitsearch ui did not start serving")
