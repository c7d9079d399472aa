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
