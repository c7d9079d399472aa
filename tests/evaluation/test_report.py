"""The HTML report: every section renders in headless Chromium, tables sort, nothing leaves the page."""

import re
from pathlib import Path

import numpy as np
import pytest
from browser import chrome
from PIL import Image

from fashion_tagger.evaluation import report
from fashion_tagger.evaluation.scoring import encode_truth, score
from fashion_tagger.taxonomy import Taxonomy

SECTION_IDS = [sid for sid, _ in report.SECTIONS]


def _metrics(tmp_path: Path, n_leaves_per_sub: int = 4) -> dict:
    """A realistic metrics dict: 3 levels (one ragged path, >20 leaves), attributes, images."""
    rng = np.random.default_rng(0)
    paths = [["Footwear", "Other"]]
    for m in ("Apparel", "Footwear", "Accessories"):
        for s in range(3):
            paths += [
                [m, f"{m[:3]} sub {s}", f"{m[:3]} art {s}{a}"] for a in range(n_leaves_per_sub)
            ]
    paths.append(["Apparel", "Apparel sub 9", "<script>alert(1)</script>"])  # must be escaped
    tax = Taxonomy.from_paths(paths, ["master", "sub", "article"])
    n = 120
    labels = [paths[i] for i in rng.integers(0, len(paths), n)]
    names = ["colour=Red", "season=Summer", "usage=Casual", "never=seen"]
    attrs = [[a for a in names[:3] if rng.random() < 0.4] for _ in range(n)]
    images = []
    for i in range(n):
        rel = f"images/{i:03d}.png"
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.new("RGB", (40, 60), (int(i * 2), 90, 160)).save(tmp_path / rel)
        images.append(rel)
    truth, _ = encode_truth(tax, names, labels, attrs, images)
    levels = []
    for lvl, c in enumerate(tax.sizes):
        logits = rng.normal(0, 1, (n, c))
        rows = truth.paths[:, lvl] >= 0
        logits[rows, truth.paths[rows, lvl]] += 2.5
        p = np.exp(logits)
        levels.append(p / p.sum(1, keepdims=True))
    scores = np.clip(truth.attributes * 0.5 + rng.random((n, len(names))) * 0.5, 0, 1)
    m = score(tax, levels, scores, truth, names, [0.75, 0.5, 0.6, 0.75])
    m["run"] = {"model_id": "tiny-0123456789ab"}
    m["dataset"] = {"name": "fake", "split": "test", "n_images": n}
    return m


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    m = _metrics(tmp)
    run = tmp / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.csv").write_text(
        "epoch,step,train_loss,val_loss,val_acc_master,val_acc_sub\n"
        "0,10,2.0,,,\n0,20,1.5,1.6,0.5,0.3\n1,30,1.1,,,\n1,40,0.9,1.2,0.7,0.5\n"
    )
    path = report.write_report(m, tmp / "out" / "report.html", dataset_root=tmp, run_dir=run)
    return m, path


def test_self_contained_html(rendered):
    m, path = rendered
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # nothing is fetched: no src/href/url() to any host, images are data URIs
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", text, re.I)
    assert "<link" not in text and "@import" not in text
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', text)
    assert len(srcs) >= 3 + 1 + len(m["top_losses"])  # confusion plots, curves, thumbnails
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in srcs)
    # labels are escaped, never markup
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # many classes: only the most frequent ones in the confusion matrix, and the page says so
    assert f"The {report.MAX_CONFUSION_CLASSES} most frequent of" in text


def test_sections_render_in_chromium_tables_sort_and_nothing_is_fetched(rendered, tmp_path):
    from selenium.webdriver.common.by import By

    _, path = rendered
    with chrome() as driver:
        driver.get(path.as_uri())
        for sid in SECTION_IDS:
            assert driver.find_element(By.ID, sid).is_displayed()
        # every image decoded (data URIs are valid PNG/JPEG)
        broken = driver.execute_script(
            "return Array.from(document.images).filter(i => !i.complete || !i.naturalWidth).length"
        )
        assert broken == 0
        # click "support" of the first per-class table twice: descending, then ascending
        table = driver.find_element(By.CSS_SELECTOR, "#per-class table.sortable")
        header = table.find_elements(By.TAG_NAME, "th")[4]

        def column() -> list[float]:
            cells = table.find_elements(By.CSS_SELECTOR, "tbody tr td:nth-child(5)")
            return [float(c.get_attribute("data-v")) for c in cells]

        header.click()
        assert column() == sorted(column())
        header.click()
        assert column() == sorted(column(), reverse=True)
        # the page asked for nothing beyond itself
        requests = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert [r for r in requests if not r.startswith(("data:", "file:"))] == []


def test_report_without_attributes_or_curves(tmp_path):
    tax = Taxonomy.from_paths([["a", "x"], ["a", "y"], ["b"]], ["l0", "l1"])
    truth, _ = encode_truth(tax, [], [["a", "x"], ["b"]], [[], []], ["1.png", "2.png"])
    levels = [np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.6, 0.4], [0.5, 0.5]])]
    m = score(tax, levels, np.zeros((2, 0)), truth, [], [])
    html = report.render(m, dataset_root=tmp_path, run_dir=tmp_path)  # images missing on disk
    assert "This model predicts no attributes." in html
    assert "This run has no training curves" in html
    assert "no image" in html
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html


def test_short_labels_stay_unambiguous():
    assert report._axis_names(["round > red", "square > red", "round > blue"]) == [
        "round > red",
        "square > red",
        "blue",
    ]
    assert report._axis_names(["a > " + "x" * 40])[0] == "x" * 25 + "…"
    name = report._file_name("images/4c/" + "0123456789abcdef" * 4 + ".png")
    assert len(name) == 36 and name.startswith("0123456789abcde") and name.endswith("cdef.png")
    assert report._file_name("dir/shirt.jpg") == "shirt.jpg"
