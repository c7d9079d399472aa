"""Kaggle Fashion Product Images: zip or folder, tolerant styles.csv, skipped rows reported."""

from __future__ import annotations

import json
import zipfile
from collections import Counter

import pytest
from conftest import image_bytes
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources import get_importer
from fashion_tagger.sources.kaggle_products import LEVELS, _records, _Source, import_kaggle_products

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
ROWS = [
    "1,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt\n",
    "2,Women,Footwear,Shoes,Heels,Black,Summer,2012,,Catwalk Women Black Heels\n",  # empty usage
    "3,Unisex,Accessories,Bags,Backpacks,NA,Winter,2013,Casual,Wildcraft, Unisex, Backpack\n",  # extra commas
    "4,Men,Apparel,Topwear,Tshirts,White,Fall,2011,Casual,No image for this one\n",  # missing image
    "../../etc/x,Men,Apparel,Topwear,Shirts,Red,Fall,2011,Casual,Escape attempt\n",
    "5,Men\n",  # malformed: too few fields
    "6,Women,Apparel,,,Red,Fall,2011,Casual,Only a master category\n",
]


def _zip(tmp_path, top="fashion-product-images-small/"):
    path = tmp_path / "products.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(top + "styles.csv", HEADER + "".join(ROWS))
        for i in (1, 2, 3, 6):
            zf.writestr(f"{top}images/{i}.jpg", image_bytes(color=(i * 20, 0, 0)))
        zf.writestr("../evil/images/4.jpg", image_bytes())
    return path


def _check(result):
    rows = {r["item_id"]: r for r in result.dataset.table.to_pylist()}
    assert set(rows) == {"1", "2", "3", "6"}
    assert rows["1"]["labels"] == ["Apparel", "Topwear", "Shirts"]
    assert rows["1"]["attributes"] == [
        "gender=Men",
        "colour=Navy Blue",
        "season=Fall",
        "usage=Casual",
    ]
    assert json.loads(rows["1"]["meta"]) == {
        "title": "Turtle Check Men Navy Blue Shirt",
        "year": "2011",
    }
    assert "usage=" not in " ".join(rows["2"]["attributes"])
    assert "colour=NA" not in rows["3"]["attributes"]
    assert json.loads(rows["3"]["meta"])["title"] == "Wildcraft, Unisex, Backpack"
    assert rows["6"]["labels"] == ["Apparel"]
    assert result.report["reasons"] == {
        "malformed_csv_line": 1,
        "missing_image": 1,
        "path_outside_root": 1,
    }
    assert list(result.dataset.level_names) == LEVELS


def test_import_from_zip(tmp_path):
    _check(import_kaggle_products(_zip(tmp_path), tmp_path / "ds", workers=1, progress=False))


def test_import_from_folder_with_styles_anywhere(tmp_path):
    root = tmp_path / "unpacked" / "deep"
    (root / "images").mkdir(parents=True)
    (root / "styles.csv").write_text(HEADER + "".join(ROWS))
    for i in (1, 2, 3, 6):
        (root / "images" / f"{i}.jpg").write_bytes(image_bytes(color=(i * 20, 0, 0)))
    _check(
        import_kaggle_products(tmp_path / "unpacked", tmp_path / "ds", workers=1, progress=False)
    )


def test_registry_and_cli(tmp_path):
    assert get_importer("kaggle-products") is import_kaggle_products
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        app, ["import", "kaggle-products", str(_zip(tmp_path)), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["imported"] == 4


def test_not_a_zip_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_text("nope")
    with pytest.raises(DatasetError, match="neither a folder nor a zip"):
        import_kaggle_products(bad, tmp_path / "ds", progress=False)


def test_real_zip_has_33298_images_in_3_levels(datasets_dir):
    """Parse the real styles.csv and index the zip (no decoding: the benchmark imports it all)."""
    import contextlib

    with contextlib.ExitStack() as stack:
        source = _Source(datasets_dir / "fashion-product-images-small.zip", stack)
        recs = list(_records(source.styles.decode(), source))
    ok = [r for r in recs if r.error is None]
    assert len(ok) == 33298
    assert Counter(r.error for r in recs if r.error) == {"missing_image": 5}
    assert {len(r.labels) for r in ok} == {3}
    assert len({r.labels[0] for r in ok}) == 7
