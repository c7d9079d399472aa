"""A dataset dir on object storage (a real S3-compatible server on 127.0.0.1) behaves as a local
one: import, info, split, filter, export; the manifest is written last; images come through the
local mirror, fetched concurrently and checked against their content address."""

from __future__ import annotations

import json
import zipfile

import pytest
from s3_server import s3_bucket_fixture, s3_endpoint_fixture  # noqa: F401 - fixtures
from typer.testing import CliRunner

from fashion_tagger import storage
from fashion_tagger.cli import app
from fashion_tagger.dataset import manifest
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.export import export
from fashion_tagger.dataset.ops import relocate, split
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources.folders import import_folders


def _tree(root, make_image, n=4):
    for k, cls in enumerate(("shirts", "shoes")):
        for i in range(n):
            make_image(root / cls / f"{i}.jpg", color=(40 * i, 100 * k, 7))
    return root


def _fresh_cache(monkeypatch, tmp_path, name: str) -> None:
    """Another machine: an empty image cache."""
    monkeypatch.setenv("FASHION_TAGGER_CACHE", str(tmp_path / name))


def test_import_to_s3_matches_a_local_import(s3, tmp_path, make_image, monkeypatch):
    src = _tree(tmp_path / "src", make_image)
    local = import_folders(src, tmp_path / "local", workers=1, progress=False).dataset
    url = f"{s3}/products"
    result = import_folders(src, url, workers=1, progress=False)
    assert result.dataset.url == url and result.report["imported"] == 8
    _fresh_cache(monkeypatch, tmp_path, "other")
    ds = Dataset.open(url)
    assert ds.table.equals(local.table)
    assert ds.info.counts == local.info.counts == {"images": 8, "items": 8, "splits": {"none": 8}}
    assert ds.missing_images() == []
    assert not any(ds.root.glob("images/*/*"))  # nothing fetched until asked
    root = ds.local_images(workers=4)
    for i in range(len(ds)):
        assert (root / ds.table.column("image")[i].as_py()).read_bytes() == (
            local.image_path(i).read_bytes()
        )
    again = import_folders(src, url, workers=1, progress=False)
    assert again.up_to_date and again.report["imported"] == 8
    with pytest.raises(DatasetError, match="other arguments"):
        import_folders(src, url, levels=["kind"], workers=1, progress=False)


def test_manifest_is_written_last(s3, tmp_path, make_image, monkeypatch):
    """An import killed before dataset.json leaves no dataset at the URL; the re-run publishes
    it without uploading an image twice."""
    src = _tree(tmp_path / "src", make_image, n=3)
    url = f"{s3}/ds"
    real_write = storage.Remote.write_bytes

    def failing(self, rel, data):
        if rel == manifest.INFO_FILE:
            raise OSError("connection reset")
        return real_write(self, rel, data)

    monkeypatch.setattr(storage.Remote, "write_bytes", failing)
    with pytest.raises(OSError):
        import_folders(src, url, workers=1, progress=False)
    remote = storage.Remote.open(url)
    assert len(remote.listing("images")) == 6  # images first
    with pytest.raises(DatasetError, match=r"dataset\.json is missing"):
        Dataset.open(url)
    monkeypatch.setattr(storage.Remote, "write_bytes", real_write)
    uploads = []
    real_put = storage.Remote.put_file
    monkeypatch.setattr(
        storage.Remote,
        "put_file",
        lambda s, local, rel: uploads.append(rel) or real_put(s, local, rel),
    )
    assert len(import_folders(src, url, workers=1, progress=False).dataset) == 6
    assert uploads == []
    assert len(Dataset.open(url)) == 6


def test_split_info_and_export_on_s3(s3, tmp_path, make_image, monkeypatch):
    url = f"{s3}/ds"
    import_folders(_tree(tmp_path / "src", make_image), url, workers=1, progress=False)
    runner = CliRunner()
    res = runner.invoke(app, ["dataset", "split", url, "--val", "0.25", "--test", "0.25", "--json"])
    assert res.exit_code == 0, res.output
    _fresh_cache(monkeypatch, tmp_path, "other")
    res = runner.invoke(app, ["dataset", "info", url, "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["path"] == url and info["missing_images"] == 0
    assert info["splits"] == {"test": 2, "train": 4, "val": 2}
    ds = Dataset.open(url)
    assert [h["op"] for h in ds.info.history] == ["split"]
    result = export(ds, "zip", tmp_path / "out.zip", split="train", progress=False)
    assert result.images == 4 and result.failed == 0
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert len(zf.namelist()) == 4


def test_copy_between_local_and_s3(s3, tmp_path, make_image):
    local = import_folders(_tree(tmp_path / "src", make_image), tmp_path / "ds", workers=1,
                           progress=False).dataset  # fmt: skip
    ds, _ = split(local, val=0.25, test=0.25)
    url = f"{s3}/copy"
    up = relocate(ds, url).save()
    assert up.info.derived_from == str(tmp_path / "ds")
    back = relocate(Dataset.open(url), tmp_path / "back").save()
    assert back.table.equals(ds.table)
    assert back.missing_images() == []
    with pytest.raises(DatasetError, match="already holds a dataset"):
        relocate(ds, url)


def test_a_missing_remote_dataset_is_one_line_error(s3):
    res = CliRunner().invoke(app, ["dataset", "info", f"{s3}/nothing"])
    assert res.exit_code != 0
    assert isinstance(res.exception, DatasetError)
    assert "is not a dataset dir" in str(res.exception)
