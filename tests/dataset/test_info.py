"""dataset info: the summary a user (or a script, with --json) reads first."""

import hashlib
import json

from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.dataset import manifest, store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.images import encode_png
from fashion_tagger.dataset.info import describe

PATHS = [["Apparel", "Topwear", "Shirts"], ["Apparel", "Topwear", "Tshirts"], ["Footwear", "Shoes"]]


def make(root):
    """Five photos of four items; one image file shared by two rows; one row unsplit."""
    from PIL import Image

    rows = []
    for i in range(5):
        data = encode_png(Image.new("RGB", (4, 4), (min(i, 3) * 50, 0, 0)))
        sha = hashlib.sha256(data).hexdigest()
        rows.append(
            {
                "image": store.put(root, sha, "png", data),
                "sha256": sha,
                "item_id": f"item{min(i, 3)}",
                "labels": PATHS[i % 3],
                "attributes": [f"colour=c{i % 2}", "season=Summer"] if i < 4 else [],
                "split": ["train", "train", "val", "test", ""][i],
            }
        )
    return Dataset.create(
        root, manifest.rows_to_table(rows), {"name": "tiny", "levels": ["master", "sub", "article"]}
    )


def test_describe_counts(tmp_path):
    d = describe(make(tmp_path))
    assert (d["images"], d["items"], d["unique_images"], d["leaves"]) == (5, 4, 4, 3)
    assert [(lv["name"], lv["classes"], lv["images"]) for lv in d["levels"]] == [
        ("master", 2, 5),
        ("sub", 2, 5),
        ("article", 2, 4),  # Footwear > Shoes stops at the second level
    ]
    assert d["levels"][0]["counts"] == {"Apparel": 4, "Footwear": 1}
    assert d["splits"] == {"none": 1, "test": 1, "train": 2, "val": 1}
    assert d["attributes"] == {"colour": 2, "season": 1}
    assert d["attribute_values"]["colour"] == {"c0": 2, "c1": 2}
    assert d["missing_images"] == 0


def test_info_json_is_one_object_with_the_documented_keys(tmp_path):
    ds = make(tmp_path)
    ds.image_path(0).unlink()  # rows 0 and 4 share this file
    res = CliRunner().invoke(app, ["dataset", "info", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert {"images", "items", "levels", "splits", "attributes"} <= set(d)
    assert d["images"] == 5 and d["items"] == 4
    assert [{k: lv[k] for k in ("name", "classes")} for lv in d["levels"]] == [
        {"name": "master", "classes": 2},
        {"name": "sub", "classes": 2},
        {"name": "article", "classes": 2},
    ]
    assert d["splits"]["train"] == 2 and d["attributes"] == {"colour": 2, "season": 1}
    assert d["missing_images"] == 1


def test_info_text(tmp_path):
    make(tmp_path)
    res = CliRunner().invoke(app, ["dataset", "info", str(tmp_path), "--top", "1"])
    assert res.exit_code == 0, res.output
    assert "5 images, 4 items, 3 leaf classes" in res.output
    assert "Apparel" in res.output and "Footwear" not in res.output  # --top 1
    assert "colour (2 values)" in res.output
