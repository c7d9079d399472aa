"""CSV / Parquet manifests: chosen columns, URLs from a local server, paths kept inside the root."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import pandas as pd
import pytest
from conftest import image_bytes
from s3_server import s3_bucket_fixture, s3_endpoint_fixture  # noqa: F401
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources.csv_manifest import import_csv


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "remote.png").write_bytes(image_bytes("PNG", color=(1, 99, 1)))
    (root / "big.jpg").write_bytes(image_bytes(size=(400, 400)) + b"\0" * 5000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _manifest(tmp_path, url):
    root = tmp_path / "shop"
    (root / "img").mkdir(parents=True)
    for i in range(3):
        (root / "img" / f"{i}.jpg").write_bytes(image_bytes(color=(i, 40, 40)))
    (tmp_path / "secret.jpg").write_bytes(image_bytes(color=(9, 9, 9)))
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    rows = [
        {"path": "img/0.jpg", "cat": "Women", "sub": "Tops", "leaf": "Shirts", "colour": "red", "pid": "p1", "fold": "train", "price": "10"},
        {"path": "img/1.jpg", "cat": "Women", "sub": "Tops", "leaf": "", "colour": "", "pid": "p1", "fold": "validation", "price": ""},
        {"path": "img/2.jpg", "cat": "Men", "sub": "", "leaf": "", "colour": "blue", "pid": "p2", "fold": "test", "price": "3"},
        {"path": "../secret.jpg", "cat": "Men", "sub": "", "leaf": "", "colour": "", "pid": "p3", "fold": "", "price": ""},
        {"path": str(tmp_path / "secret.jpg"), "cat": "Men", "sub": "", "leaf": "", "colour": "", "pid": "p4", "fold": "", "price": ""},
        {"path": "link.jpg", "cat": "Men", "sub": "", "leaf": "", "colour": "", "pid": "p5", "fold": "", "price": ""},
        {"path": f"{url}/remote.png", "cat": "Kids", "sub": "Toys", "leaf": "", "colour": "", "pid": "p6", "fold": "train", "price": ""},
        {"path": f"{url}/missing.png", "cat": "Kids", "sub": "", "leaf": "", "colour": "", "pid": "p7", "fold": "", "price": ""},
        {"path": f"{url}/big.jpg", "cat": "Kids", "sub": "", "leaf": "", "colour": "", "pid": "p8", "fold": "", "price": ""},
        {"path": "img/9.jpg", "cat": "Men", "sub": "", "leaf": "", "colour": "", "pid": "p9", "fold": "", "price": ""},
    ]  # fmt: skip
    return root, pd.DataFrame(rows)


KW = dict(image_column="path", label_columns=["cat", "sub", "leaf"], attribute_columns=["colour"],
          item_column="pid", split_column="fold", max_image_bytes=4000, workers=1, progress=False,
          allow_private_hosts=True)  # fmt: skip


def _check(result):
    rows = {r["item_id"]: r for r in result.dataset.table.to_pylist()}
    assert set(rows) == {"p1", "p2", "p6"}
    by_url = {r["source_url"]: r for r in result.dataset.table.to_pylist()}
    assert by_url["img/0.jpg"]["labels"] == ["Women", "Tops", "Shirts"]
    assert by_url["img/0.jpg"]["attributes"] == ["colour=red"]
    assert by_url["img/0.jpg"]["split"] == "train" and by_url["img/1.jpg"]["split"] == "val"
    assert json.loads(by_url["img/0.jpg"]["meta"]) == {"price": "10"}
    assert by_url["img/1.jpg"]["labels"] == ["Women", "Tops"]
    assert by_url["img/2.jpg"]["labels"] == ["Men"]
    assert rows["p6"]["labels"] == ["Kids", "Toys"] and rows["p6"]["width"] == 16
    assert result.report["reasons"] == {"missing_image": 1, "path_outside_root": 3, "unreadable": 2}
    assert result.dataset.level_names == ("cat", "sub", "leaf")


def test_csv_manifest(tmp_path, served):
    root, df = _manifest(tmp_path, served)
    df.to_csv(root / "manifest.csv", index=False)
    _check(import_csv(root / "manifest.csv", tmp_path / "ds", **KW))


def test_parquet_manifest(tmp_path, served):
    root, df = _manifest(tmp_path, served)
    df.to_parquet(root / "manifest.parquet")
    _check(import_csv(root / "manifest.parquet", tmp_path / "ds", **KW))


def test_cli(tmp_path):
    root = tmp_path / "m"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(image_bytes("PNG"))
    (root / "m.csv").write_text("image,kind,type\na/x.png,Bags,Totes\n")
    result = CliRunner().invoke(
        app,
        ["import", "csv", str(root / "m.csv"), "--label-columns", "kind,type", "--out", str(tmp_path / "ds"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["imported"] == 1


def test_unknown_column_is_a_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("image,kind\n")
    with pytest.raises(DatasetError, match=r"no column \['type'\]"):
        import_csv(tmp_path / "m.csv", tmp_path / "ds", label_columns=["kind", "type"])


def test_urls_to_private_addresses_are_refused_before_connecting(tmp_path, served):
    """Without --allow-private-hosts, rows naming loopback, private or link-local hosts are
    skipped with the guard's reason, and the local server is never asked."""
    root = tmp_path / "m"
    root.mkdir()
    (root / "ok.png").write_bytes(image_bytes("PNG"))
    hosts = [served, "http://10.0.0.1", "http://169.254.169.254", "http://[::1]", "http://0.0.0.0"]
    lines = ["image,kind"] + [f"{h}/remote.png,Kids" for h in hosts] + ["ok.png,Bags"]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    result = import_csv(root / "m.csv", tmp_path / "ds", label_columns=["kind"], workers=1,
                        progress=False)  # fmt: skip
    assert len(result.dataset) == 1
    assert result.report["reasons"] == {"unreadable": len(hosts)}
    assert "refused before connecting" in json.dumps(result.report)


def test_object_store_images_are_fetched_concurrently(tmp_path, s3, monkeypatch):
    """s3:// images on the local S3 server: fetched (several at once), stored, labelled; a
    missing key is a skipped row; file://, local:// and chained URLs are refused unread."""
    import threading
    import time

    import fsspec

    from fashion_tagger.sources import csv_manifest

    fs = fsspec.filesystem("s3")
    bucket = s3.removeprefix("s3://")
    for i in range(6):
        fs.pipe_file(f"{bucket}/img/{i}.png", image_bytes("PNG", color=(i, 7, 7)))
    (tmp_path / "secret.png").write_bytes(image_bytes("PNG", color=(5, 5, 5)))
    live, peak, lock = [0], [0], threading.Lock()
    real = csv_manifest.fetch_object

    def counting(url, max_bytes):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        try:
            time.sleep(0.2)  # a round trip: the others must start meanwhile
            return real(url, max_bytes)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(csv_manifest, "fetch_object", counting)
    lines = ["image,kind"] + [f"{s3}/img/{i}.png,Bags" for i in range(6)]
    lines += [f"{s3}/img/nope.png,Bags", f"file://{tmp_path}/secret.png,Bags",
              f"local://{tmp_path}/secret.png,Bags", f"simplecache::{s3}/img/0.png,Bags"]  # fmt: skip
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    result = import_csv(tmp_path / "m.csv", tmp_path / "ds", label_columns=["kind"], workers=1,
                        progress=False)  # fmt: skip
    assert len(result.dataset) == 6
    assert sorted(r["source_url"] for r in result.dataset.table.to_pylist()) == [
        f"{s3}/img/{i}.png" for i in range(6)
    ]
    assert result.report["reasons"] == {"unreadable": 1, "unsupported_url": 3}
    assert "does not exist" in json.dumps(result.report["skipped_records"])
    assert peak[0] > 1  # fetched concurrently, not one after another


def test_category_tree_in_a_csv(tmp_path):
    from fashion_tagger.sources.vinted.categories import Leaf
    from fashion_tagger.sources.vinted.state import State

    state = State(tmp_path / "crawl")
    state.add_categories([Leaf(10, ("Women", "Bags")), Leaf(11, ("Men", "Shoes", "Boots"))])
    state.db.close()
    root = tmp_path / "m"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(image_bytes("PNG", color=(i, 1, 1)))
    (root / "m.csv").write_text("image,catalog_id\n0.png,10\n1.png,11.0\n2.png,99\n")
    kw = dict(category_column="catalog_id", workers=1, progress=False)
    result = import_csv(
        root / "m.csv", tmp_path / "ds", category_tree=tmp_path / "crawl" / "crawl.db", **kw
    )
    rows = {r["source_url"]: r["labels"] for r in result.dataset.table.to_pylist()}
    assert rows == {"0.png": ["Women", "Bags"], "1.png": ["Men", "Shoes", "Boots"]}
    assert result.report["reasons"] == {"unknown_category": 1}
    with pytest.raises(DatasetError, match="needs its tree"):
        import_csv(root / "m.csv", tmp_path / "ds2", **kw)
    with pytest.raises(DatasetError, match="give at least one label column"):
        import_csv(root / "m.csv", tmp_path / "ds3", workers=1)
