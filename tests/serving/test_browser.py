"""The web page in headless Chromium: pick a photo, see its category path and attributes."""

from __future__ import annotations

import pytest
from browser import chrome
from serve_fakes import FakePredictor, png, serve_in_thread

from fashion_tagger.serving.app import create_app
from fashion_tagger.serving.deps import get_predictor
from fashion_tagger.serving.settings import Settings


@pytest.fixture(scope="module")
def browser():
    with chrome(window="1200,900") as driver:
        yield driver


@pytest.fixture(scope="module")
def url():
    app = create_app(Settings(max_images=4))
    app.dependency_overrides[get_predictor] = FakePredictor
    with serve_in_thread(app) as base:
        yield base


def test_upload_shows_the_path_scores_and_attribute_chips(browser, url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    red, blue = tmp_path / "red-dress.png", tmp_path / "blue-shoe.png"
    red.write_bytes(png((220, 30, 30), (40, 20)))
    blue.write_bytes(png((30, 60, 220), (20, 40)))
    browser.get(url + "/")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "fake-000000000000" in d.find_element(By.ID, "model").text)
    assert "backend" in browser.find_element(By.ID, "model").text
    assert browser.find_element(By.ID, "max-images").text == "4"  # the server's limit
    browser.find_element(By.ID, "file").send_keys(f"{red}\n{blue}")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.card[data-state="done"]')) == 2)
    cards = {
        c.find_element(By.CSS_SELECTOR, ".file").text: c
        for c in browser.find_elements(By.CSS_SELECTOR, ".card")
    }
    red_card, blue_card = cards["red-dress.png"], cards["blue-shoe.png"]
    assert red_card.get_attribute("data-path") == "round > red"
    assert blue_card.get_attribute("data-path") == "square > blue"
    labels = [e.text for e in red_card.find_elements(By.CSS_SELECTOR, ".step .label")]
    scores = [e.text for e in red_card.find_elements(By.CSS_SELECTOR, ".step .score")]
    assert labels == ["round", "red"] and scores[0] == "90.0%"
    chips = [e.text.replace("\n", " ") for e in red_card.find_elements(By.CSS_SELECTOR, ".chip")]
    assert len(chips) == 1 and "size" in chips[0] and "big" in chips[0]
    assert "small" in blue_card.find_element(By.CSS_SELECTOR, ".chips").text
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    browser.save_screenshot(str(tmp_path / "page.png"))  # for a human look when debugging
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_non_image_shows_the_servers_message(browser, url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    browser.get(url + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    box = browser.find_element(By.ID, "error")
    WebDriverWait(browser, 20).until(lambda d: box.is_displayed())
    assert "notes.png" in box.text and "not_an_image" in box.text
