"""UT-Zappos50K: meta-data.csv + image-path.mat (written here with scipy.io.savemat)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import image_bytes
from scipy.io import savemat
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources.zappos import import_zappos, read_image_paths

PATHS = [
    "Shoes/Sneakers and Athletic Shoes/Nike/7716996.288224.jpg",
    "Boots/Mid-Calf/Frye/100627.72.jpg",
    "Sandals/Flat/Teva/1.1.jpg",  # no file
    "../outside.jpg",
]
CSV = (
    "CID,Category,SubCategory,HeelHeight,Insole,Closure,Gender,Material,ToeStyle\n"
    "7716996-288224,Shoes,Sneakers and Athletic Shoes,,Padded,Lace up,Men,Leather,Round\n"
    "100627-72,Boots,Mid-Calf,High heel,,Zipper,Women,Suede,\n"
    "1-1,Sandals,Flat,,,,Girls,,\n"
    "2-2,Shoes,Loafers,,,,Men,,\n"
)


def _make(tmp_path, image_dir="images"):
    src = tmp_path / "zappos"
    src.mkdir()
    (src / "meta-data.csv").write_text(CSV)
    cells = np.empty((len(PATHS), 1), dtype=object)
    for i, p in enumerate(PATHS):
        cells[i, 0] = np.array([p])
    savemat(src / "image-path.mat", {"imagepath": cells})
    for i, p in enumerate(PATHS[:2]):
        path = src / image_dir / p
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(color=(i, 1, 1)))
    return src


def test_read_image_paths(tmp_path):
    assert read_image_paths(_make(tmp_path) / "image-path.mat") == PATHS


@pytest.mark.parametrize("image_dir", ["images", "."])
def test_import(tmp_path, image_dir):
    result = import_zappos(_make(tmp_path, image_dir), tmp_path / "ds", workers=1, progress=False)
    rows = {r["item_id"]: r for r in result.dataset.table.to_pylist()}
    assert set(rows) == {"7716996-288224", "100627-72"}
    assert rows["7716996-288224"]["labels"] == ["Shoes", "Sneakers and Athletic Shoes"]
    assert rows["100627-72"]["attributes"] == ["gender=Women"]
    assert json.loads(rows["100627-72"]["meta"]) == {
        "HeelHeight": "High heel",
        "Closure": "Zipper",
        "Material": "Suede",
    }
    assert result.report["reasons"] == {"missing_image": 1, "path_outside_root": 1}
    assert result.dataset.level_names == ("Category", "SubCategory")


def test_cli_and_row_count_mismatch(tmp_path):
    src = _make(tmp_path)
    result = CliRunner().invoke(
        app, ["import", "zappos", str(src), "--out", str(tmp_path / "ds"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["imported"] == 2
    (src / "meta-data.csv").write_text(CSV + "3-3,Shoes,Clogs,,,,Men,,\n")
    with pytest.raises(DatasetError, match="must match"):
        import_zappos(src, tmp_path / "ds2", progress=False)
