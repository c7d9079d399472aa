"""HDF5 arrays in the shared layout: splits, grey and colour images, `a__b` label paths."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources import hdf5


def _write(path, colour=False, val=True):
    rng = np.random.default_rng(0)
    shape = (5, 8, 6, 3) if colour else (5, 8, 6)
    with h5py.File(path, "w") as f:
        f["train_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        f["train_labels"] = np.array([0, 1, 2, 0, 7])  # 7 is not in the label map
        f["test_images"] = rng.integers(0, 256, (2, *shape[1:]), dtype=np.uint8)
        f["test_labels"] = np.array([1, 2])
        if val:
            f["val_images"] = rng.integers(0, 256, (1, *shape[1:]), dtype=np.uint8)
            f["val_labels"] = np.array([2])
        f["label_map"] = np.array(
            [b"0,Apparel__Topwear__Shirts", b"1,Apparel__Bottomwear", b"2,Footwear"]
        )
    return path


@pytest.mark.parametrize("colour", [False, True])
def test_import(tmp_path, colour, monkeypatch):
    monkeypatch.setattr(hdf5, "CHUNK", 2)  # several chunks per split
    src = _write(tmp_path / "x.h5", colour)
    result = hdf5.import_hdf5(
        src, tmp_path / "ds", levels=["a", "b", "c"], workers=1, progress=False
    )
    ds = result.dataset
    assert len(ds) == 7 and ds.split_counts() == {"test": 2, "train": 4, "val": 1}
    assert result.report["reasons"] == {"unknown_label": 1}
    rows = {r["item_id"]: r for r in ds.table.to_pylist()}
    assert rows["train-0"]["labels"] == ["Apparel", "Topwear", "Shirts"]
    assert rows["test-0"]["labels"] == ["Apparel", "Bottomwear"]
    assert rows["val-0"]["labels"] == ["Footwear"]
    assert ds.level_names == ("a", "b", "c")
    i = ds.table.column("item_id").to_pylist().index("train-1")
    img = Image.open(ds.image_path(i))
    assert img.size == (6, 8) and img.mode == ("RGB" if colour else "L")
    with h5py.File(src) as f:
        assert np.array_equal(np.asarray(img), f["train_images"][1])


def test_cli_without_val(tmp_path):
    src = _write(tmp_path / "x.h5", val=False)
    result = CliRunner().invoke(app, ["import", "hdf5", str(src), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert "imported 6" in result.output


def test_wrong_layout_is_a_clear_error(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["images"] = np.zeros((1, 2, 2), np.uint8)
    with pytest.raises(DatasetError, match="does not follow the layout"):
        hdf5.import_hdf5(tmp_path / "bad.h5", tmp_path / "ds", progress=False)
    (tmp_path / "text.h5").write_text("no")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        hdf5.import_hdf5(tmp_path / "text.h5", tmp_path / "ds", progress=False)


def test_label_map_parsing():
    assert hdf5.parse_label_map(["3,a__b", b"4,c"]) == {3: ["a", "b"], 4: ["c"]}
    with pytest.raises(DatasetError):
        hdf5.parse_label_map(["nocomma"])
