"""The Zappos author's workflow on a generated product zip, as a user runs it (#22):

import kaggle-products -> filter --where masterCategory=Footwear --where gender=Men,Women ->
relevel --levels gender -> split -> a one-epoch train -> evaluate --slice-by colour.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
from conftest import image_bytes
from run_fixtures import one_thread
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.dataset.core import Dataset

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
COLOURS = {"Pink": (240, 120, 170), "Black": (20, 20, 20), "White": (240, 240, 240)}


def _product_zip(tmp_path):
    """90 products: footwear for Men, Women and Boys and some apparel, in three colours; the
    picture's brightness follows the gender a little, its hue the colour."""
    rng = np.random.default_rng(0)
    lines, images = [], {}
    for i in range(90):
        gender = ("Men", "Women", "Boys")[i % 3] if i < 72 else ("Men", "Women")[i % 2]
        master, sub, art = (
            ("Footwear", "Shoes", "Casual Shoes") if i < 72 else ("Apparel", "Topwear", "Tshirts")
        )
        colour = list(COLOURS)[(i // 3) % 3]
        lines.append(f"{i},{gender},{master},{sub},{art},{colour},Summer,2012,Casual,P {i}\n")
        shade = np.array(COLOURS[colour]) + (25 if gender == "Women" else -25)
        noise = rng.integers(-10, 10)
        images[i] = image_bytes(
            size=(24, 32), color=tuple(int(c) for c in np.clip(shade + noise, 0, 255))
        )
    path = tmp_path / "products.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fashion-product-images-small/styles.csv", HEADER + "".join(lines))
        for i, data in images.items():
            zf.writestr(f"fashion-product-images-small/images/{i}.jpg", data)
    return path


def _ok(args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def test_footwear_gender_by_colour(tmp_path):
    data, run = tmp_path / "products", tmp_path / "run"
    _ok(["import", "kaggle-products", _product_zip(tmp_path), "--out", data, "--no-progress"])
    _ok(["dataset", "filter", data, "--where", "masterCategory=Footwear",
         "--where", "gender=Men,Women"])  # fmt: skip
    ds = Dataset.open(data)
    assert len(ds) == 48 and {p[0] for p in ds.labels} == {"Footwear"}
    _ok(["dataset", "relevel", data, "--levels", "gender"])
    _ok(["dataset", "split", data, "--val", "0.2", "--test", "0.3", "--seed", "0"])
    ds = Dataset.open(data)
    assert ds.info.levels == ("gender",) and {tuple(p) for p in ds.labels} == {("Men",), ("Women",)}
    assert [h["op"] for h in ds.info.history][-3:] == ["filter", "relevel", "split"]
    with one_thread():
        _ok(["train", data, "--out", run, "--backbone", "simple-cnn", "--weights", "none",
             "--epochs", "1", "--image-size", "16", "--hidden", "8", "--batch-size", "8",
             "--workers", "0", "--no-progress"])  # fmt: skip
        _ok(["evaluate", run, data, "--slice-by", "colour", "--no-progress"])
    m = json.loads((run / "metrics.json").read_text())
    assert [b["name"] for b in m["levels"]] == ["gender"]
    assert {c["name"] for c in m["levels"][0]["per_class"]} == {"Men", "Women"}
    colour = m["slices"]["colour"]
    assert colour["kind"] == "attribute" and "Pink" in colour["values"]
    assert set(colour["values"]) <= set(COLOURS)
    assert sum(v["n"] for v in colour["values"].values()) == m["dataset"]["n_images"]
    assert all(set(v["levels"]) == {"gender"} for v in colour["values"].values())
    assert "by colour (attribute" in (run / "report.html").read_text()
