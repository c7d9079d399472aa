"""`predict --engine ray`: the same rows as the local predict, on a local Ray cluster, and a
re-run that rewrites only the partitions that are missing."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_fixtures import shared_tiny_run

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import FashionTaggerError, MissingExtraError
from fashion_tagger.inference.predict import predict_paths
from fashion_tagger.inference.ray_predict import (
    PLAN_FILE,
    plan_partitions,
    predict_ray,
    resolve_source,
)

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """(run_dir, folder): the tiny run and 31 images in two subfolders, one of them broken."""
    run_dir, dataset_dir = shared_tiny_run()
    folder = tmp_path_factory.mktemp("photos")
    ds = Dataset.open(dataset_dir)
    for i, rel in enumerate(ds.table.column("image").to_pylist()[:30]):
        target = folder / ("a" if i % 3 else "b") / f"img{i:02d}.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(dataset_dir / rel, target)
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    return run_dir, folder


def _read_parts(out: Path) -> pa.Table:
    parts = sorted(out.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts])


def _assert_same_rows(ray_rows: list[dict], local_rows: list[dict], tol: float = 1e-5) -> None:
    assert len(ray_rows) == len(local_rows)
    for r, lo in zip(ray_rows, local_rows, strict=True):
        assert (r["error"] is None) == (lo["error"] is None), (r["image"], r["error"], lo["error"])
        assert [(p["level"], p["label"]) for p in r["path"]] == [
            (p["level"], p["label"]) for p in lo["path"]
        ]
        for a, b in zip(r["path"], lo["path"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=tol)
        assert [t["path"] for t in r["top_k"]] == [t["path"] for t in lo["top_k"]]
        for a, b in zip(r["top_k"], lo["top_k"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=tol)
        assert [a["name"] for a in r["attributes"]] == [a["name"] for a in lo["attributes"]]
        for a, b in zip(r["attributes"], lo["attributes"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=tol)


def test_same_rows_as_local_predict_and_resume_by_partition(cluster, photos, tmp_path) -> None:
    run_dir, folder = photos
    local = tmp_path / "local.parquet"
    predict_paths(run_dir, [folder], local, progress=False)
    out = tmp_path / "ray"
    summary = predict_ray(run_dir, folder, out, partition_size=8, batch_size=5)
    names = [f"part-{k:05d}.parquet" for k in range(4)]  # 31 images, 8 per partition
    assert summary["written"] == names and summary["skipped"] == []
    assert (summary["images"], summary["errors"], summary["partitions"]) == (31, 1, 4)
    local_table = pq.read_table(local)
    ray_table = _read_parts(out)
    assert ray_table.schema.equals(local_table.schema)
    assert ray_table.column("image").to_pylist() == local_table.column("image").to_pylist()
    _assert_same_rows(ray_table.to_pylist(), local_table.to_pylist())
    broken = [r for r in ray_table.to_pylist() if r["error"]]
    assert [Path(r["image"]).name for r in broken] == ["broken.png"]

    before = {n: (out / n).stat().st_mtime_ns for n in names}
    again = predict_ray(run_dir, folder, out, partition_size=8, batch_size=5)
    assert again["written"] == [] and again["skipped"] == names
    assert {n: (out / n).stat().st_mtime_ns for n in names} == before

    old = pq.read_table(out / names[2])
    (out / names[2]).unlink()
    resumed = predict_ray(run_dir, folder, out, partition_size=8, batch_size=5)
    assert resumed["written"] == [names[2]]
    assert resumed["skipped"] == [names[0], names[1], names[3]]
    after = {n: (out / n).stat().st_mtime_ns for n in names}
    assert all(after[n] == before[n] for n in names if n != names[2])
    assert after[names[2]] > before[names[2]]
    # the same rows again (batches differ, so scores may differ in the last float bits)
    _assert_same_rows(pq.read_table(out / names[2]).to_pylist(), old.to_pylist())
    assert not list(out.glob(".*.tmp"))


def test_urls_and_manifests_as_source(cluster, photos, tmp_path) -> None:
    """An fsspec URL source (file://, read in the decode tasks through fsspec) and a CSV
    manifest with relative paths both give the local predict's scores."""
    run_dir, folder = photos
    local = pq.read_table(_local(run_dir, folder, tmp_path)).to_pylist()
    by_name = {Path(r["image"]).name: r for r in local}

    url = folder.resolve().as_uri()  # file:///...
    summary = predict_ray(run_dir, url, tmp_path / "url", partition_size=16, batch_size=8)
    assert summary["images"] == 31 and len(summary["written"]) == 2
    rows = _read_parts(tmp_path / "url").to_pylist()
    assert all(r["image"].startswith("file://") for r in rows)
    _assert_same_rows(rows, [by_name[Path(r["image"]).name] for r in rows])

    csv = tmp_path / "list" / "manifest.csv"
    csv.parent.mkdir()
    picked = sorted(folder.rglob("img*.png"))[:10]
    lines = ["path,note"] + [f"{os.path.relpath(p, csv.parent)},x" for p in picked]
    csv.write_text("\n".join(lines) + "\n")
    summary = predict_ray(run_dir, csv, tmp_path / "csv", partition_size=100)
    rows = _read_parts(tmp_path / "csv").to_pylist()
    assert summary["images"] == 10 and len(rows) == 10
    _assert_same_rows(rows, [by_name[Path(r["image"]).name] for r in rows])


def _local(run_dir: Path, folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "local.parquet"
    predict_paths(run_dir, [folder], out, progress=False)
    return out


def test_resolve_source_kinds(photos, tmp_path) -> None:
    folder = photos[1]
    _, dataset_dir = shared_tiny_run()
    rels = Dataset.open(dataset_dir).table.column("image").to_pylist()
    assert resolve_source(dataset_dir) == sorted(str(dataset_dir / r) for r in rels)
    assert len(resolve_source(folder)) == 31
    assert resolve_source(str(folder / "a" / "*.png")) == sorted(
        str(p) for p in (folder / "a").glob("*.png")
    )
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": ["b.png", "a.png", "/abs/c.png"]}), manifest)
    assert resolve_source(manifest) == sorted(
        [str(tmp_path / "b.png"), str(tmp_path / "a.png"), "/abs/c.png"]
    )
    pq.write_table(pa.table({"name": ["a.png"]}), tmp_path / "bad.parquet")
    with pytest.raises(FashionTaggerError, match="no image column"):
        resolve_source(tmp_path / "bad.parquet")
    with pytest.raises(FashionTaggerError, match="no images found"):
        resolve_source(tmp_path / "nothing-here")


def test_partitions_are_fixed_slices_of_the_sorted_input() -> None:
    paths = [f"p{i:03d}" for i in range(23)]
    parts = plan_partitions(paths, 10)
    assert [len(p) for p in parts] == [10, 10, 3]
    assert [x for p in parts for x in p] == paths
    assert plan_partitions(paths[:20], 10) == parts[:2]  # more input never moves a partition


def test_another_job_in_the_same_out_dir_is_refused(photos, tmp_path) -> None:
    run_dir, folder = photos
    out = tmp_path / "out"
    out.mkdir()
    (out / PLAN_FILE).write_text('{"model_id": "other", "partition_size": 8}')
    with pytest.raises(FashionTaggerError, match="another job"):
        predict_ray(run_dir, folder, out, partition_size=8)


def test_missing_ray_says_how_to_install(photos, tmp_path, monkeypatch) -> None:
    run_dir, folder = photos
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'fashion-tagger\[ray\]'"):
        predict_ray(run_dir, folder, tmp_path / "out", partition_size=8)
