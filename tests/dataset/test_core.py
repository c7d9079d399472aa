"""The dataset dir contract: manifest schema, atomic writes, format version, Dataset views."""

import hashlib
import json

import pyarrow as pa
import pytest
from PIL import Image

from fashion_tagger.dataset import manifest, store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.images import encode_png
from fashion_tagger.errors import DatasetError


def _make(tmp_path, n=4):
    rows = []
    for i in range(n):
        data = encode_png(Image.new("RGB", (8 + i, 6), (i * 40, 0, 0)))
        sha = hashlib.sha256(data).hexdigest()
        rows.append(
            {
                "image": store.put(tmp_path, sha, "png", data),
                "sha256": sha,
                "item_id": f"item{i // 2}",
                "labels": ["Tops", "Shirt"] if i % 2 else ["Bottoms"],
                "attributes": [f"colour=c{i}"],
                "split": "train" if i < 2 else "test",
                "width": 8 + i,
                "height": 6,
                "meta": json.dumps({"title": f"t{i}"}),
            }
        )
    return Dataset.create(
        tmp_path, manifest.rows_to_table(rows), {"name": "tiny", "levels": ["group", "class"]}
    )


def test_create_and_open_roundtrip(tmp_path):
    ds = _make(tmp_path)
    again = Dataset.open(tmp_path)
    assert again.table.equals(ds.table)
    assert again.table.schema == manifest.SCHEMA
    assert again.level_names == ("group", "class")
    assert again.info.counts == {"images": 4, "items": 2, "splits": {"test": 2, "train": 2}}
    assert again.attribute_groups == ["colour"]
    assert again.meta(1) == {"title": "t1"}


def test_images_are_content_addressed(tmp_path):
    ds = _make(tmp_path)
    for i in range(len(ds)):
        sha = ds.table.column("sha256")[i].as_py()
        assert ds.table.column("image")[i].as_py() == f"images/{sha[:2]}/{sha}.png"
        assert ds.load_image(i).size == (8 + i, 6)
    assert ds.missing_images() == []


def test_taxonomy_with_short_paths(tmp_path):
    tax = _make(tmp_path).taxonomy
    assert tax.sizes == (2, 1)
    assert tax.encode(["Bottoms"]) == [0, -1]


def test_split_view(tmp_path):
    ds = _make(tmp_path)
    assert len(ds.split("test")) == 2
    assert set(ds.split("test").table.column("split").to_pylist()) == {"test"}


def test_unknown_format_version_is_refused(tmp_path):
    _make(tmp_path)
    info = json.loads((tmp_path / "dataset.json").read_text())
    info["format_version"] = 99
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="format version 99"):
        Dataset.open(tmp_path)


def test_not_a_dataset_dir(tmp_path):
    with pytest.raises(DatasetError, match="is not a dataset dir"):
        Dataset.open(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset.open(tmp_path / "nope")


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    _make(tmp_path)
    (tmp_path / "items.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="unreadable"):
        Dataset.open(tmp_path)


def test_failed_write_keeps_the_old_manifest(tmp_path):
    ds = _make(tmp_path)
    before = (tmp_path / "items.parquet").read_bytes()
    bad = pa.table({"image": ["x"]})
    with pytest.raises(DatasetError, match="lacks columns"):
        ds.with_table(bad)
    assert (tmp_path / "items.parquet").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
