"""WebDataset export: shards the `webdataset` library reads back with every label intact."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from run_fixtures import make_synthetic_dataset

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.webdataset import (
    INDEX_FILE,
    ShardSizeError,
    export_webdataset,
    parse_size,
)
from fashion_tagger.errors import DatasetError, FashionTaggerError
from fashion_tagger.taxonomy import Taxonomy

wds = pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("wds") / "ds", n=60, seed=3)


def _read_back(out: Path) -> list[dict]:
    """Every sample of every shard, through the webdataset library (decoded images too)."""
    index = json.loads((out / INDEX_FILE).read_text())
    urls = [str(out / s["name"]) for s in index["shards"]]
    pipe = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")
    return list(pipe)


def test_shards_read_back_with_the_manifests_labels(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    result = export_webdataset(dataset, out, shard_size="4kB")
    ds = Dataset.open(dataset)
    manifest = ds.table.to_pylist()
    samples = _read_back(out)
    assert len(samples) == len(manifest) == result.samples
    assert result.failed == 0
    seen = set()
    for sample in samples:
        meta = sample["json"]
        row = manifest[int(sample["__key__"])]
        seen.add(int(sample["__key__"]))
        assert meta["labels"] == row["labels"]
        assert meta["attributes"] == row["attributes"]
        assert meta["split"] == row["split"]
        assert meta["item_id"] == row["item_id"]
        assert meta["sha256"] == row["sha256"] == _sha(ds.root / row["image"])
        img = sample["png"]
        assert isinstance(img, Image.Image)
        assert img.size == (row["width"], row["height"])
    assert seen == set(range(len(manifest)))
    # the stored bytes, untouched: each image hashes to its manifest sha256
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".png"):
                    data = tar.extractfile(m).read()
                    meta = json.loads(tar.extractfile(m.name[:-4] + ".json").read())
                    assert hashlib.sha256(data).hexdigest() == meta["sha256"]


def test_shard_size_splits_and_no_shard_mixes_splits(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    result = export_webdataset(dataset, out, shard_size="20kB")
    index = json.loads((out / INDEX_FILE).read_text())
    assert len(index["shards"]) >= 3
    assert [s["name"] for s in index["shards"]] == [
        f"shard-{k:06d}.tar" for k in range(len(index["shards"]))
    ]
    for shard in index["shards"]:
        path = out / shard["name"]
        assert path.stat().st_size == shard["bytes"] <= 20_000
        with tarfile.open(path) as tar:
            metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
        assert len(metas) == shard["samples"]
        assert {m["split"] for m in metas} == {shard["split"]}
    counts = Dataset.open(dataset).split_counts()
    assert index["splits"] == counts == result.splits
    assert sum(s["samples"] for s in index["shards"]) == sum(counts.values())
    # the taxonomy and the dataset description sit beside the shards
    tax = Taxonomy.from_dict(json.loads((out / "taxonomy.json").read_text()))
    assert tax == Dataset.open(dataset).taxonomy
    assert json.loads((out / "dataset.json").read_text())["name"] == "ds"
    assert not list(out.glob(".*.tmp"))  # no temp file left behind


def test_one_split_and_one_big_shard(dataset: Path, tmp_path: Path) -> None:
    result = export_webdataset(dataset, tmp_path / "val", split="val")
    n_val = Dataset.open(dataset).split_counts()["val"]
    assert result.samples == n_val and len(result.shards) == 1
    assert {s["json"]["split"] for s in _read_back(tmp_path / "val")} == {"val"}
    with pytest.raises(DatasetError, match="no rows"):
        export_webdataset(dataset, tmp_path / "none", split="holdout")


def test_refuses_to_overwrite_and_is_reproducible(dataset: Path, tmp_path: Path) -> None:
    export_webdataset(dataset, tmp_path / "a", shard_size="1MB")
    export_webdataset(dataset, tmp_path / "b", shard_size="1MB")
    a, b = (tmp_path / "a" / "shard-000000.tar"), (tmp_path / "b" / "shard-000000.tar")
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(DatasetError, match="already holds shards"):
        export_webdataset(dataset, tmp_path / "a")


def test_a_missing_image_is_counted_not_fatal(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "ds", n=10, seed=1)
    ds = Dataset.open(root)
    (root / ds.table.column("image")[4].as_py()).unlink()
    result = export_webdataset(root, tmp_path / "out")
    assert (result.samples, result.failed) == (9, 1)
    assert len(_read_back(tmp_path / "out")) == 9


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256MB", 256_000_000),
        ("1GB", 1_000_000_000),
        ("500kB", 500_000),
        ("500KB", 500_000),
        ("64MiB", 64 * 1024**2),
        ("1.5 GB", 1_500_000_000),
        ("4096", 4096),
        (1000, 1000),
    ],
)
def test_parse_size(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "12 parsecs", "-5MB", "0", "0MB", "MB", "1e3"])
def test_bad_sizes_say_how_to_fix(text) -> None:
    with pytest.raises(ShardSizeError, match="--shard-size") as err:
        parse_size(text)
    assert isinstance(err.value, FashionTaggerError)


@given(st.integers(1, 10**12), st.sampled_from(["", "B", "kB", "MB", "GB", "KiB", "MiB"]))
def test_parse_size_round_trips_whole_numbers(n: int, unit: str) -> None:
    scale = {"": 1, "B": 1, "kB": 1000, "MB": 10**6, "GB": 10**9, "KiB": 1024, "MiB": 1024**2}
    assert parse_size(f"{n}{unit}") == n * scale[unit]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tar_members_have_fixed_metadata(dataset: Path, tmp_path: Path) -> None:
    export_webdataset(dataset, tmp_path / "s", split="test")
    with tarfile.open(tmp_path / "s" / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.mode, m.uname) for m in members} == {(0, 0o644, "root")}
    keys = [m.name.split(".", 1)[0] for m in members]
    assert keys[::2] == keys[1::2]  # image then JSON of one sample, side by side
