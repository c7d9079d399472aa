"""The review page: built from label_issues.parquet, driven with the keyboard in Chromium."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import chrome
from run_fixtures import make_synthetic_dataset
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.curation.review import (
    ISSUES_FILE,
    page_data,
    render_page,
    write_review_page,
)
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError


def issue_rows(ds: Dataset) -> list[dict]:
    """Seven rows of two kinds; scores all different, so the order is known."""
    images = ds.table.column("image").to_pylist()
    items = ds.table.column("item_id").to_pylist()
    specs = [
        # given, suggested, score, kind, level
        (["round", "red"], ["round", "blue"], 0.95, "label", "colour"),
        (["square", "green"], ["round", "green"], 0.90, "label", "shape"),
        ([], ["square", "green"], 0.70, "low_confidence", "colour"),
        (["square", "blue"], ["square", "red"], 0.60, "label", "colour"),
        ([], ["round", "red"], 0.40, "low_confidence", "shape"),
        (["round", "blue"], ["square", "green"], 0.30, "label", "shape"),
        (["square", "red"], ["square", "red"], 0.05, "label", ""),
    ]
    return [
        {
            "item_id": items[i],
            "image": images[i],
            "given": g,
            "suggested": s,
            "score": sc,
            "kind": k,
            "level": lvl,
            "is_issue": sc >= 0.2,
        }
        for i, (g, s, sc, k, lvl) in enumerate(specs)
    ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = make_synthetic_dataset(tmp_path_factory.mktemp("review") / "shapes", n=10)
    ds = Dataset.open(root)
    pq.write_table(pa.Table.from_pylist(issue_rows(ds)), root / ISSUES_FILE)
    return root


@pytest.fixture(scope="module")
def page(dataset) -> Path:
    return write_review_page(dataset)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    with chrome() as driver:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        driver.downloads = downloads
        yield driver


def open_page(browser, page: Path) -> None:
    """A fresh visit: decisions a previous test left in the browser's storage are cleared."""
    # Chromium commits a page's localStorage writes to its store asynchronously, so on a busy
    # machine the previous test's decisions can land after a clear: clear and reload until the
    # page starts with none (a bounded loop, not a timed wait)
    for _ in range(50):
        browser.get(page.as_uri())
        browser.execute_script("localStorage.clear()")
        browser.get(page.as_uri())
        if _decisions_after_load(browser, 0) == []:
            return
    raise AssertionError("the review page kept decisions from an earlier visit")


def press(browser, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    for k in keys:
        ActionChains(browser).send_keys(k).perform()


def choose(browser, select_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, select_id)).select_by_value(value)


def visible(browser) -> list[str]:
    return browser.execute_script("return window.review.visible()")


def test_the_page_is_self_contained_and_sorted_by_score(browser, dataset, page):
    from selenium.webdriver.common.by import By

    html = page.read_text()
    assert page == dataset / "review.html"
    assert not re.search(r"(src|href)=\"https?:", html)  # no CDN, no remote thumbnail
    open_page(browser, page)
    rows = issue_rows(Dataset.open(dataset))
    flagged = [r["image"] for r in rows if r["is_issue"]]
    assert visible(browser) == flagged  # highest score first; the unflagged row is left out
    thumbs = browser.find_elements(By.CSS_SELECTOR, "td.thumb img")
    assert len(thumbs) == 6
    assert all(t.get_attribute("src").startswith("data:image/jpeg;base64,") for t in thumbs)
    # every thumbnail decoded (a broken data URI has naturalWidth 0)
    widths = browser.execute_script(
        "return [...document.querySelectorAll('td.thumb img')].map(i => i.naturalWidth)"
    )
    assert all(w > 0 for w in widths)
    first = browser.find_element(By.CSS_SELECTOR, "tr.row")
    assert first.find_element(By.CSS_SELECTOR, ".given").text.split() == ["round", "›", "red"]
    assert first.find_element(By.CSS_SELECTOR, ".suggested .bad").text == "blue"
    assert first.find_element(By.CSS_SELECTOR, ".score").text == "0.950"
    assert "current" in first.get_attribute("class")
    queued = browser.find_elements(By.CSS_SELECTOR, 'tr[data-kind="low_confidence"] .given')
    assert [q.text for q in queued] == ["(unlabelled)", "(unlabelled)"]


def test_keys_make_the_decisions_file_that_relabel_reads(browser, dataset, page):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, page)
    rows = [r for r in issue_rows(Dataset.open(dataset)) if r["is_issue"]]
    # accept 0 (moves on), skip 1 with j, reject 2, accept 3, undo (3 back to undecided),
    # arrows: up to 2, down to 3, then reject 3; k back to 2 and accept it over the reject.
    press(browser, "a", "j", "r", "a", "u", Keys.ARROW_UP, Keys.ARROW_DOWN, "r", "k", "k", "a")
    got = browser.execute_script("return window.review.decisions()")

    def decision(r, d):
        labels = r["suggested"] if d == "accept" else r["given"]
        return {"image": r["image"], "item_id": r["item_id"], "decision": d, "labels": labels}

    want = [decision(rows[0], "accept"), decision(rows[2], "accept"), decision(rows[3], "reject")]
    assert got == want
    assert want[1]["labels"] == ["square", "green"]  # a low-confidence row gets its suggestion
    counts = browser.execute_script("return document.getElementById('counts').textContent")
    assert "2 accepted" in counts and "1 rejected" in counts

    target = browser.downloads / "decisions.json"
    target.unlink(missing_ok=True)
    press(browser, "e")
    deadline = time.monotonic() + 10
    while not target.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads(target.read_text()) == want


def test_the_offline_page_imports_an_exported_decisions_file(browser, dataset, page, tmp_path):
    """Opened as a file, the page keeps decisions in this browser; a decisions file exported
    before (here or on another machine) brings them back, rows of other datasets ignored."""
    from selenium.webdriver.common.by import By

    open_page(browser, page)
    assert browser.execute_script("return window.review.mode()") == "local"
    rows = [r for r in issue_rows(Dataset.open(dataset)) if r["is_issue"]]
    exported = [
        {"image": rows[1]["image"], "item_id": rows[1]["item_id"], "decision": "reject",
         "labels": rows[1]["given"]},
        {"image": rows[4]["image"], "item_id": rows[4]["item_id"], "decision": "accept",
         "labels": rows[4]["suggested"]},
        {"image": "images/00/elsewhere.png", "decision": "accept", "labels": ["x"]},
    ]  # fmt: skip
    file = tmp_path / "decisions.json"
    file.write_text(json.dumps(exported))
    browser.find_element(By.ID, "import-file").send_keys(str(file))
    got = _decisions_after_load(browser, 2)
    assert got == [exported[0], exported[1]]  # in page order; the stranger left out
    status = browser.execute_script("return document.getElementById('saved').textContent")
    assert status == "imported 2 decisions from decisions.json"


def _decisions_after_load(browser, n: int) -> list:
    """The page's decisions once its script has run (it may still be loading on a busy machine:
    polled, not timed; the generous bound only keeps a broken page from hanging the suite)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    script = "return window.review ? window.review.decisions() : null"
    with contextlib.suppress(TimeoutException):  # the assertion then shows what the page has
        WebDriverWait(browser, 120, poll_frequency=0.2).until(
            lambda b: len(b.execute_script(script) or []) >= n
        )
    return browser.execute_script(script)


def test_filters_show_the_right_rows(browser, dataset, page):
    open_page(browser, page)
    rows = [r for r in issue_rows(Dataset.open(dataset)) if r["is_issue"]]
    choose(browser, "class", "green")
    assert visible(browser) == [
        r["image"] for r in rows if "green" in r["given"] or "green" in r["suggested"]
    ]
    choose(browser, "side", "given")
    assert visible(browser) == [rows[1]["image"]]
    choose(browser, "side", "suggested")
    assert visible(browser) == [rows[i]["image"] for i in (1, 2, 5)]
    choose(browser, "kind", "low_confidence")
    assert visible(browser) == [rows[2]["image"]]
    choose(browser, "class", "")
    assert visible(browser) == [rows[2]["image"], rows[4]["image"]]
    choose(browser, "sort", "score-asc")
    assert visible(browser) == [rows[4]["image"], rows[2]["image"]]
    # the current row stays current through a re-sort; keys act on the filtered list
    assert browser.execute_script("return window.review.current()") == rows[2]["image"]
    press(browser, "k", "r")
    got = browser.execute_script("return window.review.decisions()")
    assert [(d["image"], d["decision"], d["labels"]) for d in got] == [
        (rows[4]["image"], "reject", [])
    ]


def test_rows_beyond_the_limit_are_counted_and_text_cannot_break_the_page(dataset, tmp_path):
    ds = Dataset.open(dataset)
    rows = issue_rows(ds)
    rows[0]["given"] = ["</script><script>alert(1)</script>", "red"]
    data = page_data(ds, rows, max_rows=2)
    assert [r["score"] for r in data["rows"]] == [0.95, 0.90]
    assert (data["total"], data["omitted"]) == (6, 4)
    html = render_page(data)
    assert "</script><script>alert" not in html
    payload = html.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(payload)["rows"][0]["given"][0].startswith("</script>")
    everything = page_data(ds, pa.Table.from_pylist(rows), only_issues=False)
    assert len(everything["rows"]) == 7 and everything["omitted"] == 0


def test_a_missing_image_or_issues_file_is_handled(dataset, tmp_path):
    ds = Dataset.open(dataset)
    rows = issue_rows(ds)[:1]
    rows[0]["image"] = "images/00/missing.png"
    assert page_data(ds, rows)["rows"][0]["thumb"] is None
    bare = make_synthetic_dataset(tmp_path / "bare", n=5)
    with pytest.raises(DatasetError, match="fashion-tagger audit"):
        write_review_page(bare)


@pytest.mark.parametrize("flag", ["--static", "--out"])
def test_the_review_command_writes_the_page(dataset, tmp_path, flag):
    out = tmp_path / "page" / "r.html"
    result = CliRunner().invoke(app, ["review", str(dataset), flag, str(out), "--max-rows", "3"])
    assert result.exit_code == 0, result.output
    data = json.loads(
        out.read_text().split('type="application/json">', 1)[1].split("</script>", 1)[0]
    )
    assert len(data["rows"]) == 3 and data["omitted"] == 3
