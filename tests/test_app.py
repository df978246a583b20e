"""The app end to end: `landmark app` on the registry's champion (trained on tiny photos),
driven by headless Debian chromium through Selenium. Screenshots go to `test-artifacts/`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import requests
from browser import CHROMEDRIVER, CHROMIUM, screenshot, wait_for
from conftest import free_port, gps_jpeg, photo_bytes, start, stop, train_tiny_champion

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """A champion trained on the tiny colour data set, served by `landmark app`."""
    tmp = tmp_path_factory.mktemp("app")
    uri = train_tiny_champion(tmp)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    command = [str(Path(sys.executable).parent / "landmark"), "app", "--port", str(port)]
    server = start(command, f"http://127.0.0.1:{port}/", tmp / "app.log", env)
    yield f"http://127.0.0.1:{port}"
    stop(server)


def upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "files").send_keys(str(path))


def test_page_names_the_model_and_offers_examples(app_url, browser):
    from selenium.webdriver.common.by import By

    browser.get(app_url)
    wait_for(browser, "#examples button")
    model = browser.find_element(By.ID, "model").text
    assert "landmark-classifier version 1 (champion)" in model
    assert "test top-1 accuracy" in model
    assert len(browser.find_elements(By.CSS_SELECTOR, "#examples button")) == 3
    browser.find_element(By.CSS_SELECTOR, "#examples button").click()
    wait_for(browser, ".result .bars")
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources and all(r.startswith(app_url) for r in resources)  # nothing from outside


def test_uploaded_photo_shows_the_landmark_and_where_it_is(app_url, browser, tmp_path):
    from selenium.webdriver.common.by import By

    photo = tmp_path / "holiday.webp"
    photo.write_bytes(photo_bytes(size=(640, 480), colour=(200, 30, 30), fmt="WEBP", seed=8))
    browser.get(app_url)
    upload(browser, photo)
    assert wait_for(browser, ".result .top-name").text == "Eiffel Tower"
    location = browser.find_element(By.CSS_SELECTOR, ".result .location")
    assert "Eiffel Tower, France" in location.text and "48.8584, 2.2945" in location.text
    link = location.find_element(By.TAG_NAME, "a").get_attribute("href")
    assert link.startswith("https://www.openstreetmap.org/?mlat=48.8584&mlon=2.2945")
    bars = browser.find_elements(By.CSS_SELECTOR, ".result .bar")
    assert len(bars) == 3 and bars[0].text.startswith("Eiffel Tower")
    assert browser.find_element(By.CSS_SELECTOR, ".result .file").text == "holiday.webp"
    screenshot(browser, "app-upload.png")


def test_photo_with_gps_says_so(app_url, browser, tmp_path):
    photo = tmp_path / "tagged.jpg"
    photo.write_bytes(gps_jpeg((30, 200, 30), 37.0, 122.0))
    browser.get(app_url)
    upload(browser, photo)
    assert "already carries GPS coordinates: 37.0000, 122.0000" in wait_for(browser, ".gps").text


def test_bad_uploads_get_a_message_and_the_app_keeps_serving(app_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    not_image = tmp_path / "notes.jpg"
    not_image.write_bytes(b"%PDF-1.4 not a photo at all")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(photo_bytes(size=(640, 480))[:3000])
    browser.get(app_url)
    upload(browser, not_image)
    error = wait_for(browser, ".result .error").text
    assert error.startswith("notes.jpg: not an image file")
    upload(browser, truncated)
    WebDriverWait(browser, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result .error")) == 2
    )
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".result .error")]
    assert errors[0].startswith("cut.jpg: truncated or corrupt JPEG data")
    screenshot(browser, "app-bad-upload.png")
    assert requests.get(f"{app_url}/api/info", timeout=10).status_code == 200
    good = tmp_path / "good.png"
    good.write_bytes(photo_bytes(size=(300, 300), colour=(30, 30, 200), fmt="PNG"))
    upload(browser, good)
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".result .top-name")
    )
    assert browser.find_element(By.CSS_SELECTOR, ".result .top-name").text == "Taj Mahal"
