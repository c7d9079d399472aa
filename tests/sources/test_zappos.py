"""UT-Zappos50K: meta-data.csv + image-path.mat (written here with scipy.io.savemat)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import image_bytes
from scipy.io import savemat
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources.zappos import import_zappos, path_variants, read_image_paths

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


# -- the authors' layout and the %2E fix ------------------------------------------------------
AUTHOR_PATHS = [
    "Shoes/Oxfords/L.A.M.B./8001.1.jpg",  # on disk as L.A.M.B%2E
    "Boots/Ankle/Ugg Australia Inc%2E/8002.2.jpg",  # listed escaped, on disk with the period
    "Sandals/Flat/Teva/8003.3.jpg",
    "Shoes/Flats/Nobody/8004.4.jpg",  # no file in any spelling
]
AUTHOR_DISK = [
    "Shoes/Oxfords/L.A.M.B%2E/8001.1.jpg",
    "Boots/Ankle/Ugg Australia Inc./8002.2.jpg",
    "Sandals/Flat/Teva/8003.3.jpg",
]
AUTHOR_CSV = (
    "CID,Category,SubCategory,HeelHeight,Insole,Closure,Gender,Material,ToeStyle\n"
    "8001-1,Shoes,Oxfords,,,,Women,,\n"
    "8002-2,Boots,Ankle,,,,Women,,\n"
    "8003-3,Sandals,Flat,,,,Men,,\n"
    "8004-4,Shoes,Flats,,,,Men,,\n"
)


def _author_layout(tmp_path):
    """`zappos/ut-zap50k-data/` (metadata) beside `zappos/ut-zap50k-images-square/` (images),
    as the two zips of the download unpack."""
    top = tmp_path / "zappos"
    data = top / "ut-zap50k-data"
    data.mkdir(parents=True)
    (data / "meta-data.csv").write_text(AUTHOR_CSV)
    cells = np.empty((len(AUTHOR_PATHS), 1), dtype=object)
    for i, p in enumerate(AUTHOR_PATHS):
        cells[i, 0] = np.array([p])
    savemat(data / "image-path.mat", {"imagepath": cells})
    for i, p in enumerate(AUTHOR_DISK):
        path = top / "ut-zap50k-images-square" / p
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(color=(80 * i, 9, 9)))
    return top


@pytest.mark.parametrize("point_at", ["top", "data"])
def test_author_layout_and_period_folders(tmp_path, point_at):
    top = _author_layout(tmp_path)
    src = top if point_at == "top" else top / "ut-zap50k-data"
    result = import_zappos(src, tmp_path / "ds", workers=1, progress=False)
    rows = {r["item_id"]: r for r in result.dataset.table.to_pylist()}
    assert set(rows) == {"8001-1", "8002-2", "8003-3"}
    assert result.report["reasons"] == {"missing_image": 1}
    assert rows["8001-1"]["source_url"] == AUTHOR_PATHS[0]  # the path as the metadata lists it
    assert rows["8001-1"]["attributes"] == ["gender=Women"]
    disk = top / "ut-zap50k-images-square" / AUTHOR_DISK[0]
    assert rows["8001-1"]["sha256"] == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert len({r["sha256"] for r in rows.values()}) == 3


def test_path_variants_repair_trailing_periods_and_stay_inside():
    assert path_variants("a/L.A.M.B./x.jpg") == ["a/L.A.M.B./x.jpg", "a/L.A.M.B%2E/x.jpg"]
    assert path_variants("a/Inc%2e/x.jpg") == ["a/Inc%2e/x.jpg", "a/Inc./x.jpg"]
    assert path_variants("a/Co../x.") == ["a/Co../x.", "a/Co%2E%2E/x."]  # the file keeps its name
    assert path_variants("a/%2E%2E/x.jpg") == ["a/%2E%2E/x.jpg"]  # never `..`
    assert path_variants("a/b/x.jpg") == ["a/b/x.jpg"]


def test_no_metadata_names_both_layouts(tmp_path):
    with pytest.raises(DatasetError, match="ut-zap50k-data/ folder"):
        import_zappos(tmp_path, tmp_path / "ds", progress=False)
