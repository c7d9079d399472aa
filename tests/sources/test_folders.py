"""The folders importer: folder names are levels, `a__b` splits, train/validation/test is the split."""

from __future__ import annotations

import json
from collections import Counter

from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.sources.folders import folder_records, import_folders


def test_folder_import_with_split_and_level_folders(tmp_path, make_image):
    src = tmp_path / "src"
    make_image(src / "train" / "women__coats" / "a.jpg", color=(1, 2, 3))
    make_image(src / "validation" / "women__coats" / "b.png", fmt="PNG", color=(4, 5, 6))
    make_image(src / "test" / "men" / "shoes" / "c.webp", fmt="WEBP", color=(7, 8, 9))
    (src / "train" / "notes.txt").write_text("not an image")
    result = import_folders(src, tmp_path / "ds", workers=1, progress=False)
    rows = {r["source_url"]: r for r in result.dataset.table.to_pylist()}
    assert rows["train/women__coats/a.jpg"]["labels"] == ["women", "coats"]
    assert rows["validation/women__coats/b.png"]["split"] == "val"
    assert rows["test/men/shoes/c.webp"]["labels"] == ["men", "shoes"]
    assert result.report["reasons"] == {"unsupported_extension": 1}


def test_real_clothing_dataset_records(datasets_dir):
    recs = [r for r in folder_records(datasets_dir / "clothing-dataset-small") if r.error is None]
    assert len(recs) == 3409
    assert Counter(r.split for r in recs) == {"train": 3068, "val": 341}
    assert len({tuple(r.labels) for r in recs}) == 10


def test_cli_imports_a_slice_of_the_real_dataset(tmp_path, datasets_dir):
    src = tmp_path / "slice"
    real = datasets_dir / "clothing-dataset-small"
    for split in ("train", "validation"):
        for cls in ("hat", "skirt"):
            for f in sorted((real / split / cls).glob("*.jpg"))[:3]:
                (src / split / cls).mkdir(parents=True, exist_ok=True)
                (src / split / cls / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["import", "folders", str(src), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    ds = import_folders(src, out, progress=False).dataset  # a re-run: up to date
    assert len(ds) == 12 and ds.split_counts() == {"train": 6, "val": 6}
    assert ds.level_names == ("level0",)
    assert min(ds.table.column("width").to_pylist() + ds.table.column("height").to_pylist()) > 100


def test_a_fifo_named_like_an_image_is_skipped_not_read(tmp_path) -> None:
    import os

    from PIL import Image

    src = tmp_path / "src" / "Tops"
    src.mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(src / "a.png")
    os.mkfifo(src / "pipe.jpg")
    result = import_folders(tmp_path / "src", tmp_path / "out")
    assert len(result.dataset) == 1
    assert "FIFO" in json.dumps(result.report)


def _zip(path, entries: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def test_notebook_split_folders_are_splits_not_levels(tmp_path, make_image):
    src = tmp_path / "src"
    make_image(src / "vinted_dev_train" / "women__coats" / "123.jpeg", color=(1, 2, 3))
    make_image(src / "vinted_dev_train" / "women__coats" / "123__2.jpeg", color=(3, 2, 1))
    make_image(src / "vinted_dev_val" / "men__shoes" / "456.jpeg", color=(4, 5, 6))
    ds = import_folders(src, tmp_path / "ds", workers=1, progress=False).dataset
    rows = sorted((r.item_id, tuple(r.labels), r.split) for r in ds.to_pandas().itertuples())
    assert rows == [("123", ("women", "coats"), "train"), ("123", ("women", "coats"), "train"),
                    ("456", ("men", "shoes"), "val")]  # fmt: skip


def test_zip_of_one_folder_is_read_in_place_and_hostile_entries_refused(tmp_path, make_image):
    import zipfile

    img = make_image(tmp_path / "a.jpg", color=(9, 8, 7)).read_bytes()
    entries = {
        "export/train/tops/a.jpg": img,
        "export/val/tops/b.jpg": img,
        "export/../../evil/tops/c.jpg": img,  # zip slip
        "/abs/tops/d.jpg": img,
        "export/.hidden/tops/e.jpg": img,
        "__MACOSX/export/train/tops/._a.jpg": b"junk",
    }
    _zip(tmp_path / "src.zip", entries)
    result = import_folders(tmp_path / "src.zip", tmp_path / "ds", workers=1, progress=False)
    rows = {(tuple(r.labels), r.split) for r in result.dataset.to_pandas().itertuples()}
    # the outside entries refused: the zip's single folder is no longer the root, so its name
    # became a level; nothing was read from outside, nothing written outside the dataset dir
    assert result.report["reasons"] == {"path_outside_root": 2}
    assert rows == {(("export", "train", "tops"), ""), (("export", "val", "tops"), "")}
    assert not (tmp_path / "evil").exists()
    _zip(tmp_path / "clean.zip", {k: v for k, v in entries.items() if k.startswith("export/t")}
         | {"export/val/tops/b.jpg": img})  # fmt: skip
    ds = import_folders(tmp_path / "clean.zip", tmp_path / "ds2", workers=1, progress=False).dataset
    assert ds.split_counts() == {"train": 1, "val": 1}
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("tops/huge.jpg", b"\0" * (51 * 1024 * 1024))
        zf.writestr("tops/ok.jpg", img)
        zf.writestr("shoes/ok.jpg", img)
    bomb = import_folders(tmp_path / "bomb.zip", tmp_path / "ds3", workers=1, progress=False)
    assert bomb.report["reasons"] == {"too_large": 1} and len(bomb.dataset) == 2


def test_a_file_that_is_not_a_zip_is_one_error(tmp_path):
    import pytest

    from fashion_tagger.errors import DatasetError

    (tmp_path / "x.zip").write_text("no")
    with pytest.raises(DatasetError, match="neither a folder nor a zip"):
        import_folders(tmp_path / "x.zip", tmp_path / "ds", progress=False)
