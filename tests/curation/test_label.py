"""`label`: auto-label photos into a dataset dir; confident rows labelled, the rest queued."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_fixtures import PATHS, draw_item, one_thread, shared_tiny_run

from fashion_tagger.curation.label import (
    LOW_CONFIDENCE,
    SOURCE,
    label,
    write_queue,
)
from fashion_tagger.curation.relabel import issues_settings, read_issues, write_issues
from fashion_tagger.dataset import images
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.info import describe
from fashion_tagger.errors import DatasetError, FashionTaggerError
from fashion_tagger.inference.tagger import Tagger

ISSUES_FILE = "label_issues.parquet"


@pytest.fixture(scope="module")
def run_dir() -> Path:
    return shared_tiny_run()[0]


def make_photos(folder: Path, n: int, seed: int) -> list[Path]:
    """`n` photos of the synthetic shapes in sub-folders, each one distinct."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        path = PATHS[i % len(PATHS)]
        f = folder / f"shop{i % 2}" / f"{seed}-{i}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        draw_item(path, bool(rng.integers(2)), rng.random() < 0.3, rng).save(f)
        out.append(f)
    return out


def run_label(run_dir, paths, out, p):
    with one_thread():
        return label(run_dir, paths, out, p, batch_size=8, progress=False)


def test_every_photo_becomes_a_predicted_row_and_only_the_doubtful_are_queued(run_dir, tmp_path):
    make_photos(tmp_path / "photos", 20, seed=1)
    (tmp_path / "photos" / "notes.png").write_bytes(b"not an image")
    out = tmp_path / "labelled"
    s = run_label(run_dir, [tmp_path / "photos"], out, 0.6)
    assert (s.photos, s.added, len(s.skipped)) == (21, 20, 1)
    assert s.skipped[0]["file"].endswith("notes.png")
    assert s.labelled + s.queued == 20 and s.labelled > 0

    ds = Dataset.open(out)
    info = describe(ds)  # `dataset info` reads it
    assert info["images"] == 20 and info["missing_images"] == 0
    assert ds.level_names == ("shape", "colour")
    tax = Tagger.load(run_dir, backend="torch").spec.taxonomy
    queue_images = set()
    for i in range(len(ds)):
        row = {c: ds.table.column(c)[i].as_py() for c in ("image", "sha256", "labels", "source")}
        meta = ds.meta(i)
        assert row["source"] == SOURCE
        assert 0.0 <= meta["confidence"] <= 1.0
        assert tax.contains(meta["predicted"]) and len(meta["predicted"]) == 2
        # content-addressed: the stored bytes hash to the row's sha256
        assert images.probe((out / row["image"]).read_bytes()).sha256 == row["sha256"]
        assert row["image"] == f"images/{row['sha256'][:2]}/{row['sha256']}.png"
        if meta["confidence"] >= 0.6:
            assert row["labels"] == meta["predicted"] and meta["auto_labelled"]
        else:
            assert row["labels"] == [] and not meta["auto_labelled"]
            queue_images.add(row["image"])
    assert ds.table.column("item_id")[0].as_py().startswith("shop")  # the path below the folder

    issues = pq.read_table(out / ISSUES_FILE).to_pylist()
    assert {r["image"] for r in issues} == queue_images and len(issues) == s.queued
    by_image = {ds.table.column("image")[i].as_py(): ds.meta(i) for i in range(len(ds))}
    for r in issues:
        meta = by_image[r["image"]]
        assert r["kind"] == LOW_CONFIDENCE and r["is_issue"] and r["given"] == []
        assert r["suggested"] == meta["predicted"]
        assert r["score"] == pytest.approx(1 - meta["confidence"])
        assert r["level"] == min(meta["level_scores"], key=meta["level_scores"].get)


def test_the_threshold_splits_labelled_from_queued(run_dir, tmp_path):
    make_photos(tmp_path / "photos", 10, seed=2)
    everything = run_label(run_dir, [tmp_path / "photos"], tmp_path / "all", 0.0)
    assert (everything.labelled, everything.queued) == (10, 0)
    assert (
        not (tmp_path / "all" / ISSUES_FILE).exists()
        or not pq.read_table(tmp_path / "all" / ISSUES_FILE).num_rows
    )
    nothing = run_label(run_dir, [tmp_path / "photos"], tmp_path / "none", 1.0)
    assert (nothing.labelled, nothing.queued) == (0, 10)
    assert pq.read_table(tmp_path / "none" / ISSUES_FILE).num_rows == 10


def test_the_temperature_moves_confidences_and_so_the_accepted_rows(run_dir, tmp_path):
    """label thresholds the calibrated confidence: the run dir's temperatures (model.json)
    decide which rows pass a given --min-confidence; T < 1 sharpens, T > 1 softens."""
    import shutil

    from fashion_tagger.model.rundir import RunDir

    make_photos(tmp_path / "photos", 20, seed=7)
    confidences = {}
    for name, t in (("sharp", 0.25), ("plain", 1.0), ("soft", 4.0)):
        run = tmp_path / f"run-{name}"
        shutil.copytree(run_dir, run)
        RunDir.open(run).update_model_json(temperature={"shape": t, "colour": t})
        s = run_label(run, [tmp_path / "photos"], tmp_path / name, 0.8)
        ds = Dataset.open(tmp_path / name)
        by_sha = {ds.table.column("sha256")[i].as_py(): ds.meta(i) for i in range(len(ds))}
        confidences[name] = {k: m["confidence"] for k, m in by_sha.items()}
        labelled = sum(bool(x) for x in ds.labels)
        assert labelled == s.labelled == sum(c >= 0.8 for c in confidences[name].values())
        # the confidence is the product of the scaled levels, as predict reports it
        for m in by_sha.values():
            product = np.prod(list(m["level_scores"].values()))
            assert m["confidence"] == pytest.approx(product, rel=1e-5)
    keys = sorted(confidences["plain"])
    sharp, plain, soft = (
        np.array([confidences[n][k] for k in keys]) for n in ("sharp", "plain", "soft")
    )
    assert (sharp >= plain - 1e-6).all() and (soft <= plain + 1e-6).all()
    assert (sharp >= 0.8).sum() > (plain >= 0.8).sum() > (soft >= 0.8).sum()


def test_a_rerun_adds_only_new_photos(run_dir, tmp_path):
    photos = tmp_path / "photos"
    make_photos(photos, 6, seed=3)
    out = tmp_path / "ds"
    first = run_label(run_dir, [photos], out, 0.5)
    again = run_label(run_dir, [photos], out, 0.5)
    assert first.added == 6 and (again.added, again.already) == (0, 6)
    make_photos(photos, 4, seed=4)
    (photos / "copy.png").write_bytes((photos / "shop0" / "3-0.png").read_bytes())
    more = run_label(run_dir, [photos], out, 0.5)
    assert (more.added, more.already) == (4, 7)  # the copy has the bytes of one already there
    ds = Dataset.open(out)
    assert len(ds) == 10 and len(set(ds.table.column("sha256").to_pylist())) == 10
    assert [s.kind for s in ds.info.sources] == [SOURCE, SOURCE]
    assert [h["op"] for h in ds.info.history] == ["label", "label"]
    queued = sum(1 for i in range(len(ds)) if not ds.labels[i])
    assert pq.read_table(out / ISSUES_FILE).num_rows == queued


def test_the_same_photo_twice_in_one_run_is_one_row(run_dir, tmp_path):
    (f,) = make_photos(tmp_path / "a", 1, seed=5)
    copy = tmp_path / "b" / "copy.png"
    copy.parent.mkdir()
    copy.write_bytes(f.read_bytes())
    s = run_label(run_dir, [f, copy], tmp_path / "ds", 0.5)
    assert (s.added, s.already) == (1, 1)
    assert Dataset.open(tmp_path / "ds").table.column("item_id").to_pylist() == [f.stem]


def test_reviewed_rows_leave_the_queue_and_audit_rows_stay(run_dir, tmp_path):
    make_photos(tmp_path / "photos", 6, seed=6)
    out = tmp_path / "ds"
    run_label(run_dir, [tmp_path / "photos"], out, 1.0)
    ds = Dataset.open(out)
    audit_row = {
        "item_id": "x",
        "image": ds.table.column("image")[0].as_py(),
        "given": ["round", "red"],
        "suggested": ["round", "blue"],
        "score": 0.8,
        "kind": "label",
        "level": "colour",
        "is_issue": True,
        "outlier_score": 0.25,
    }
    table = pa.concat_tables(
        [read_issues(out), pa.Table.from_pylist([audit_row])], promote_options="permissive"
    )
    write_issues(out, table, {"folds": 5})
    # a reviewer accepts row 1 and rejects row 2 (as `dataset relabel` records them)
    labels, metas = ds.labels, ds.table.column("meta").to_pylist()
    labels[1] = ds.meta(1)["predicted"]
    metas[2] = json.dumps({**ds.meta(2), "review": {"decision": "reject"}})
    table = ds.table.set_column(3, "labels", pa.array(labels, pa.list_(pa.string())))
    table = table.set_column(10, "meta", pa.array(metas, pa.string()))
    path, n = write_queue(ds.with_table(table).save())
    rows = pq.read_table(path).to_pylist()
    assert n == 4 and len(rows) == 5
    assert rows[0]["kind"] == "label" and rows[0]["outlier_score"] == 0.25  # highest score first
    assert issues_settings(read_issues(out)) == {"folds": 5}
    queued = {r["image"] for r in rows if r["kind"] == LOW_CONFIDENCE}
    assert not queued & {ds.table.column("image")[i].as_py() for i in (1, 2)}
    assert [r["score"] for r in rows[1:]] == sorted((r["score"] for r in rows[1:]), reverse=True)


def test_user_errors_say_how_to_fix_them(run_dir, tmp_path):
    make_photos(tmp_path / "photos", 2, seed=7)
    with pytest.raises(FashionTaggerError, match=r"--min-confidence must be in \[0, 1\]"):
        label(run_dir, [tmp_path / "photos"], tmp_path / "o", 1.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FashionTaggerError, match="no images found"):
        label(run_dir, [tmp_path / "empty"], tmp_path / "o")
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"format_version": 1, "levels": ["a", "b"]}))
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "image": "images/00/" + "0" * 64 + ".png",
                    "sha256": "0" * 64,
                    "item_id": "x",
                    "labels": ["p", "q"],
                    "attributes": [],
                    "split": "",
                    "source": "x",
                    "source_url": "",
                    "width": 1,
                    "height": 1,
                    "meta": "{}",
                }
            ]
        ),
        other / "items.parquet",
    )
    with pytest.raises(DatasetError, match="label into another --out"):
        run_label(run_dir, [tmp_path / "photos"], other, 0.5)


def test_accepted_queue_rows_become_ordinary_labelled_rows(run_dir, tmp_path):
    """label -> the review page's decisions -> `dataset relabel`: every row labelled, the
    queue empty, the model's taxonomy kept in dataset.json for paths no labelled row has."""
    from fashion_tagger.curation.relabel import relabel
    from fashion_tagger.taxonomy import Taxonomy

    make_photos(tmp_path / "photos", 12, seed=8)
    out = tmp_path / "ds"
    s = run_label(run_dir, [tmp_path / "photos"], out, 1.0)  # everything queued
    assert s.queued == 12
    ds = Dataset.open(out)
    stored = Taxonomy.from_dict(ds.info.extra["taxonomy"])
    assert stored == Tagger.load(run_dir, backend="torch").spec.taxonomy
    queue = read_issues(out).to_pylist()
    decisions = [  # what the page exports for "a" on every row
        {
            "image": r["image"],
            "item_id": r["item_id"],
            "decision": "accept",
            "labels": r["suggested"],
        }
        for r in queue
    ]
    relabel(out, decisions)
    ds = Dataset.open(out)
    assert all(ds.labels[i] == ds.meta(i)["predicted"] for i in range(len(ds)))
    assert ds.level_names == ("shape", "colour")
    _, n = write_queue(ds)
    assert n == 0 and read_issues(out).num_rows == 0


def test_the_label_command_prints_its_summary_and_writes_the_review_page(run_dir, tmp_path):
    from typer.testing import CliRunner

    from fashion_tagger.cli import app

    make_photos(tmp_path / "photos", 4, seed=9)
    out = tmp_path / "ds"
    args = ["label", str(run_dir), str(tmp_path / "photos"), "--out", str(out)]
    with one_thread():
        result = CliRunner().invoke(
            app, [*args, "--min-confidence", "1", "--json", "--no-progress"]
        )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["added"], summary["queued"]) == (4, 4)
    assert summary["review_page"] == str(out / "review.html")
    assert "low_confidence" in (out / "review.html").read_text()
    bad = CliRunner().invoke(app, [*args, "--min-confidence", "2"])
    assert bad.exit_code == 2
