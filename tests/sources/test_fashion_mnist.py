"""Fashion-MNIST: IDX files, Kaggle CSVs, and a checksummed download from a local server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import threading
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.sources import fashion_mnist as fm
from fashion_tagger.sources._download import DownloadError


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _write_idx(folder, n_train=6, n_test=4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            _idx(rng.integers(0, 256, (n, 28, 28)))
        )
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(np.arange(n) % 10))
    return folder


@pytest.fixture
def server(tmp_path):
    """A stdlib HTTP server on 127.0.0.1 serving a folder of IDX files."""
    root = _write_idx(tmp_path / "served")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _sums(root, algorithm="sha256"):
    return {n: hashlib.new(algorithm, (root / n).read_bytes()).hexdigest() for n in fm.CHECKSUMS}


def test_class_groups():
    assert fm.labels_of(0) == ["Tops", "T-shirt/top"]
    assert fm.labels_of(9) == ["Footwear", "Ankle boot"]
    assert {fm.GROUPS[c] for c in fm.CLASSES} == {"Tops", "Bottoms", "Dresses", "Footwear", "Bags"}


def test_idx_import_keeps_the_split_and_stores_grey_pngs(tmp_path):
    result = fm.import_fashion_mnist(
        _write_idx(tmp_path / "raw"), tmp_path / "ds", workers=1, progress=False
    )
    ds = result.dataset
    assert len(ds) == 10 and ds.split_counts() == {"test": 4, "train": 6}
    assert ds.level_names == ("group", "class")
    img = Image.open(ds.image_path(0))
    assert (img.format, img.mode, img.size) == ("PNG", "L", (28, 28))
    row = ds.table.to_pylist()[3]
    assert row["labels"] == fm.labels_of(3) and row["split"] == "train"


def test_split_adds_val_from_train_and_keeps_the_official_test(tmp_path):
    """`dataset split --val` after the import: val comes out of train, no --force, test intact."""
    fm.import_fashion_mnist(
        _write_idx(tmp_path / "raw", n_train=100, n_test=20), tmp_path / "ds", workers=1,
        progress=False,
    )  # fmt: skip
    before = Dataset.open(tmp_path / "ds").table.to_pylist()
    result = CliRunner().invoke(
        app, ["dataset", "split", str(tmp_path / "ds"), "--val", "0.2", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["val_from_train"] == 20  # 10 classes x 10 items x 0.2
    after = Dataset.open(tmp_path / "ds").table.to_pylist()
    for old, new in zip(before, after, strict=True):
        assert old["image"] == new["image"]
        if old["split"] == "test":
            assert new["split"] == "test"  # the official test split is untouched
        else:
            assert new["split"] in ("train", "val")
    per_class = Counter((r["labels"][1], r["split"]) for r in after)
    assert all(per_class[c, "val"] == 2 and per_class[c, "train"] == 8 for c in fm.CLASSES)
    assert Dataset.open(tmp_path / "ds").split_counts() == {"test": 20, "train": 80, "val": 20}


def test_real_kaggle_csv_slice(tmp_path, datasets_dir):
    src = datasets_dir / "fashion-mnist" / "fashion-mnist_test-1000.csv"
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        app, ["import", "fashion-mnist", str(src), "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    ds = fm.import_fashion_mnist(src, out, progress=False).dataset  # up to date
    assert len(ds) == 1000 and len(ds.level_names) == 2
    assert ds.split_counts() == {"test": 1000}
    assert set(Counter(p[1] for p in ds.labels)) == set(fm.CLASSES)


def test_csv_folder_with_train_and_test_files(tmp_path):
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785)) + "\n"
    row = lambda label, v: f"{label}," + ",".join([str(v)] * 784) + "\n"  # noqa: E731
    (tmp_path / "fashion-mnist_train.csv").write_text(header + row(1, 10) + row(8, 20))
    (tmp_path / "fashion-mnist_test.csv").write_text(header + row(5, 30) + "3,1,2\n" + row(12, 1))
    result = fm.import_fashion_mnist(tmp_path, tmp_path / "ds", workers=1, progress=False)
    assert result.dataset.split_counts() == {"test": 1, "train": 2}
    assert result.report["reasons"] == {"malformed_csv_line": 1, "unknown_label": 1}


def test_download_verifies_checksums_and_caches(tmp_path, server):
    root, url = server
    cache = tmp_path / "cache"
    folder = fm.download_fashion_mnist(cache, url, checksums=_sums(root, "md5"), progress=False)
    assert folder == cache / "fashion-mnist"
    assert all((folder / n).read_bytes() == (root / n).read_bytes() for n in fm.CHECKSUMS)
    mtimes = [(folder / n).stat().st_mtime_ns for n in fm.CHECKSUMS]
    fm.download_fashion_mnist(cache, url, checksums=_sums(root), progress=False)
    assert [(folder / n).stat().st_mtime_ns for n in fm.CHECKSUMS] == mtimes  # cached, not fetched


def test_checksum_mismatch_is_an_error_and_keeps_nothing(tmp_path, server):
    root, url = server
    sums = _sums(root) | {"train-images-idx3-ubyte.gz": "0" * 64}
    with pytest.raises(DownloadError, match="expected 0000"):
        fm.download_fashion_mnist(tmp_path / "cache", url, checksums=sums, progress=False)
    assert list((tmp_path / "cache" / "fashion-mnist").iterdir()) == []


def test_official_checksums_are_the_defaults(tmp_path, server):
    _, url = server
    with pytest.raises(DownloadError, match="8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        fm.download_fashion_mnist(tmp_path / "cache", url, progress=False)


def test_import_without_src_downloads_via_env(tmp_path, server, monkeypatch):
    root, url = server
    monkeypatch.setenv(fm.URL_ENV, url)
    monkeypatch.setenv("FASHION_TAGGER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "CHECKSUMS", _sums(root))
    result = CliRunner().invoke(
        app, ["import", "fashion-mnist", "--out", str(tmp_path / "ds"), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "imported 10" in result.output
    assert (tmp_path / "cache" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_unreachable_server_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(
        app,
        ["import", "fashion-mnist", "--out", str(tmp_path / "ds"), "--cache-dir", str(tmp_path),
         "--base-url", "http://127.0.0.1:9/"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert isinstance(result.exception, DownloadError)
