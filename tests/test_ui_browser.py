"""End to end in a real browser: `vitsearch ui` served locally, driven by headless Chromium.

Screenshots land in ``$UI_SCREENSHOTS`` when set (else a temporary folder): the checks below
measure what a user would see; the pictures let a person judge the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import PINNED_BACKEND, draw_album, once
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

PHOTOS = 40
BROKEN = 14  # enough unreadable files that the failures table pushes the page past the fold
MAP_CLUSTERS = 35


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def library(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """One indexed library for the module: photos, a resized copy, unreadable files."""
    root = tmp_path_factory.mktemp("ui-library")
    photos = draw_album(root / "album", PHOTOS)
    with Image.open(photos[0]) as image:
        image.resize((image.width // 2, image.height // 2)).save(root / "album" / "copy.png")
    for number in range(BROKEN):
        (root / "album" / f"broken_{number:02d}.jpg").write_bytes(b"not a jpeg at all")
    settings = load_settings(
        environ={}, home=root / "home", model=str(tiny_model), threads=1, **PINNED_BACKEND
    )
    once(settings, write=True).index([root / "album"])
    return settings, photos


@pytest.fixture(scope="module")
def server(library, tmp_path_factory: pytest.TempPathFactory):
    settings, photos = library
    port = free_port()
    env = {
        **os.environ,
        "VITSEARCH_HOME": str(settings.home),
        "VITSEARCH_MODEL": settings.model,
        "VITSEARCH_THREADS": "1",
        "VITSEARCH_BACKEND": PINNED_BACKEND["backend"],
        "VITSEARCH_PRECISION": PINNED_BACKEND["precision"],
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
        yield url, photos, settings
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: ``$UI_SCREENSHOTS`` to keep them, else a temporary folder."""
    kept = os.environ.get("UI_SCREENSHOTS")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return Path(kept)
    return tmp_path_factory.mktemp("ui-screens")


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


def waiting(browser) -> WebDriverWait:
    # Streamlit re-renders while we look: a found element may go stale, so look again.
    return WebDriverWait(browser, 90, ignored_exceptions=(StaleElementReferenceException,))


def test_upload_then_clusters_and_duplicates(server, browser, screens: Path) -> None:
    url, photos, _ = server
    wait = waiting(browser)
    _upload(browser, wait, url, photos[4])
    assert str(photos[4]) in browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(screens / "search.png"))

    _choose_page(browser, wait, "Clusters")
    wait.until(lambda driver: driver.find_elements(By.XPATH, "//button[.//p[text()='Open']]"))
    browser.save_screenshot(str(screens / "clusters.png"))

    _choose_page(browser, wait, "Duplicates")
    wait.until(when.text_to_be_present_in_element((By.TAG_NAME, "body"), "Similarity threshold"))
    browser.save_screenshot(str(screens / "duplicates.png"))
    for name in ("search", "clusters", "duplicates"):
        assert (screens / f"{name}.png").stat().st_size > 10_000


def test_result_buttons_show_their_whole_label(server, browser, screens: Path) -> None:
    url, photos, _ = server
    wait = waiting(browser)
    _upload(browser, wait, url, photos[7])
    buttons = _card_buttons(browser)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", buttons[0])
    cut = browser.execute_script(CUT_LABELS, buttons)
    browser.save_screenshot(str(screens / "result-buttons.png"))
    assert cut == []


def test_more_like_header_shows_the_photo(server, browser, screens: Path) -> None:
    url, photos, _ = server
    wait = waiting(browser)
    _upload(browser, wait, url, photos[9])
    similar = (By.XPATH, "(//div[@data-testid='stButton']//button)[1]")
    wait.until(lambda driver: _clicked(driver, similar))
    wait.until(when.text_to_be_present_in_element((By.TAG_NAME, "body"), "More like"))
    wait.until(lambda driver: len(_result_images(driver)) >= 5)
    header = browser.find_element(By.XPATH, "//*[contains(text(), 'More like')]").text
    browser.save_screenshot(str(screens / "more-like.png"))
    assert ".jpg" in header or ".png" in header  # the photo's name, not its row id
    assert not re.search(r"photo \d", header)  # the old header: "More like photo 17"


def test_map_colours_35_clusters_apart(server, browser, screens: Path) -> None:
    """Distinct colours per cluster: lands with the map figure's palette (search/projection)."""
    url, _, settings = server
    assert len(once(settings).clusters(MAP_CLUSTERS, recompute=True)) >= 30
    wait = waiting(browser)
    browser.get(f"{url}/?page=Map")
    wait.until(lambda driver: len(driver.execute_script(TRACE_COLOURS)) >= 30)
    time.sleep(1)  # plotly's transition
    colours = browser.execute_script(TRACE_COLOURS)
    browser.save_screenshot(str(screens / "map.png"))
    assert len(set(colours)) == len(colours), sorted(colours)


def test_map_fills_the_page_and_lists_every_cluster(server, browser, screens: Path) -> None:
    """The points get most of the page, no name boxes cover them, every cluster is listed."""
    url, _, settings = server
    found = once(settings).clusters(MAP_CLUSTERS, recompute=True)
    assert len(found) >= MAP_CLUSTERS
    wait = waiting(browser)
    browser.get(f"{url}/?page=Map")
    wait.until(lambda driver: len(driver.execute_script(TRACE_COLOURS)) >= len(found))
    time.sleep(1)  # plotly's transition
    layout = browser.execute_script(MAP_LAYOUT)
    browser.save_screenshot(str(screens / "map-layout.png"))
    listing = browser.find_elements(By.CSS_SELECTOR, ".map-clusters")
    if listing:
        browser.execute_script("arguments[0].scrollIntoView({block: 'end'})", listing[0])
        browser.save_screenshot(str(screens / "map-clusters.png"))
    page, area = layout["page"], layout["area"]
    assert area["width"] >= 0.9 * page["width"], layout  # the points' box, not just the div
    assert area["height"] >= 500, layout
    assert layout["annotations"] == 0, layout
    assert sorted(layout["listed"]) == sorted(f"{c.name} ({c.size})" for c in found), layout
    assert layout["unseen"] == 0, layout


def test_index_error_shows_where_the_user_clicked(server, browser, screens: Path) -> None:
    """With the button at the bottom edge of the window (where a user scrolled to it), the
    error is still in view."""
    url, *_ = server
    wait = waiting(browser)
    browser.get(f"{url}/?page=Library")
    box = wait.until(when.presence_of_element_located((By.XPATH, "//input[@type='text']")))
    wait.until(when.text_to_be_present_in_element((By.TAG_NAME, "body"), "could not be read"))
    box.send_keys("/no/such/folder")
    button = browser.find_element(By.XPATH, "//button[.//p[text()='Index now']]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'end'})", button)
    button.click()
    alert = (By.XPATH, "//*[@data-testid='stToast' or @data-testid='stAlert']")
    wait.until(lambda driver: _shown_with(driver, alert, "no such folder"))
    time.sleep(0.5)  # a rerun may still move things
    browser.save_screenshot(str(screens / "index-error.png"))
    shown = _shown_with(browser, alert, "no such folder")
    assert any(browser.execute_script(IN_VIEW, element) for element in shown)


def test_keeper_mark_is_text(server, browser, screens: Path) -> None:
    url, *_ = server
    wait = waiting(browser)
    browser.get(f"{url}/?page=Duplicates")
    wait.until(when.text_to_be_present_in_element((By.TAG_NAME, "body"), "Similarity threshold"))
    caption = "//div[@data-testid='stCaptionContainer']"
    keep = (By.XPATH, f"{caption}[starts-with(normalize-space(.), 'keep')]")
    mark = wait.until(when.presence_of_element_located(keep))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", mark)
    browser.save_screenshot(str(screens / "keeper.png"))
    assert mark.text.startswith("keep")
    assert all(ord(character) < 0x2000 for character in mark.text), mark.text  # no emoji


# Labels whose text is wider than the box that shows it (which then ends it with an ellipsis):
# the text's own layout width, from a Range, against its container's, to the sub-pixel.
CUT_LABELS = """
const cut = [];
for (const button of arguments[0]) {
  const label = button.querySelector('p');
  const text = document.createRange();
  text.selectNodeContents(label);
  const room = label.parentElement.getBoundingClientRect().width;
  if (text.getBoundingClientRect().width > room + 0.01) cut.push(button.innerText);
}
return cut;
"""
# The fill colour of each trace (one per cluster) in the Plotly map.
TRACE_COLOURS = """
return [...document.querySelectorAll('.js-plotly-plot .scatterlayer .trace')]
  .map(trace => trace.querySelector('path.point'))
  .filter(point => point !== null)
  .map(point => getComputedStyle(point).fill);
"""
# The main column, the plot's point area (Plotly's drag rectangle), the name boxes on it, and
# the cluster list under it (the text of each entry, and how many are clipped or hidden).
MAP_LAYOUT = """
const size = element => {
  const box = element.getBoundingClientRect();
  return {width: box.width, height: box.height, top: box.top};
};
const main = document.querySelector('[data-testid="stMainBlockContainer"]');
const style = getComputedStyle(main);
const inner = main.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
const plot = document.querySelector('.js-plotly-plot');
const entries = [...document.querySelectorAll('.map-clusters .map-cluster')];
const list = document.querySelector('.map-clusters');
const listBox = list ? list.getBoundingClientRect() : null;
return {
  page: {width: inner},
  div: size(plot),
  area: size(plot.querySelector('.draglayer .nsewdrag')),
  annotations: plot.querySelectorAll('.annotation').length,
  listed: entries.map(entry => entry.innerText.trim()),
  unseen: entries.filter(entry => {
    const box = entry.getBoundingClientRect();
    return box.height === 0 || box.bottom > listBox.bottom + 1 || box.right > listBox.right + 1;
  }).length,
};
"""
IN_VIEW = """
const box = arguments[0].getBoundingClientRect();
return box.top >= 0 && box.bottom <= window.innerHeight;
"""


def _upload(browser, wait, url: str, photo: Path) -> None:
    browser.get(f"{url}/?page=Search")
    upload = wait.until(when.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    upload.send_keys(str(photo))
    wait.until(when.text_to_be_present_in_element((By.TAG_NAME, "body"), "results"))
    wait.until(lambda driver: len(_result_images(driver)) >= 5)
    wait.until(lambda driver: len(_card_buttons(driver)) >= 16)  # the cards render last


def _shown_with(driver, locator, text: str) -> list:
    return [element for element in driver.find_elements(*locator) if text in element.text]


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


def _card_buttons(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "[data-testid='stButton'] button")


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
