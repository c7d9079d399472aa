"""Batch prediction over files, folders and globs to jsonl, csv and parquet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from run_fixtures import shared_tiny_run

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.inference.predict import expand_inputs, infer_format, predict_paths
from fashion_tagger.model.rundir import RunDir


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, int]:
    run_dir, dataset_dir = shared_tiny_run()
    folder = tmp_path_factory.mktemp("photos")
    ds = Dataset.open(dataset_dir).split("test")
    n = min(12, len(ds))
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(ds.image_path(i), sub / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return run_dir, folder, n


def test_folder_to_jsonl_one_valid_row_per_image(setup, tmp_path: Path) -> None:
    run_dir, folder, n = setup
    out = tmp_path / "p.jsonl"
    summary = predict_paths(run_dir, [folder], out, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary == {
        "images": n + 1,
        "errors": 1,
        "format": "jsonl",
        "out": str(out),
        "backend": "torch",
    }
    assert len(rows) == n + 1
    tax = RunDir.open(run_dir).spec.taxonomy
    good = [r for r in rows if not r["error"]]
    assert len(good) == n
    for r in good:
        labels = [p["label"] for p in r["path"]]
        assert tax.contains(labels) and tax.is_leaf(
            len(labels) - 1, tax.encode(labels)[len(labels) - 1]
        )
        assert [p["level"] for p in r["path"]] == list(tax.level_names[: len(labels)])
        assert len(r["top_k"]) == 5 and all(0 <= a["score"] <= 1 for a in r["attributes"])
    bad = [r for r in rows if r["error"]]
    assert bad[0]["image"].endswith("broken.jpg") and bad[0]["path"] == []


def test_csv_and_parquet(setup, tmp_path: Path) -> None:
    run_dir, folder, n = setup
    predict_paths(run_dir, [folder], tmp_path / "p.csv", top_k=2, progress=False)
    df = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert len(df) == n + 1
    assert list(df.columns) == [
        "image",
        "label",
        "shape",
        "shape_score",
        "colour",
        "colour_score",
        "top_k",
        "attributes",
        "error",
    ]
    ok = df[df.error == ""]
    assert all(" > " in lbl for lbl in ok.label) and all(len(json.loads(t)) == 2 for t in ok.top_k)
    predict_paths(run_dir, [folder], tmp_path / "p.parquet", progress=False)
    pq = pd.read_parquet(tmp_path / "p.parquet")
    assert len(pq) == n + 1 and set(pq.columns) == {"image", "path", "top_k", "attributes", "error"}
    assert pq.error.isna().sum() == n


def test_globs_files_and_stdout(setup, capsys) -> None:
    run_dir, folder, _ = setup
    files = expand_inputs(
        [str(folder / "**" / "img1*.png"), folder / "a" / "img1.png", "missing.png"]
    )
    assert files[0].name == "img1.png" and files[-1] == Path("missing.png")
    summary = predict_paths(run_dir, [str(folder / "a" / "*.png")], None, progress=False)
    lines = capsys.readouterr().out.splitlines()
    assert summary["images"] == len(lines) == len(list((folder / "a").glob("*.png")))


def test_cli_predict(setup, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fashion_tagger.cli import app

    run_dir, folder, n = setup
    res = CliRunner().invoke(
        app,
        [
            "predict",
            str(run_dir),
            str(folder / "b"),
            "--out",
            str(tmp_path / "x.csv"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "x.csv")) == n // 2


def test_format_errors(setup) -> None:
    assert infer_format("a.PARQUET", None) == "parquet" and infer_format(None, None) == "jsonl"
    with pytest.raises(FashionTaggerError, match="--format"):
        infer_format("a.xlsx", None)
    with pytest.raises(FashionTaggerError, match="no images"):
        predict_paths(setup[0], [str(setup[1] / "*.nothing")], None, progress=False)


# -- untrusted inputs: outputs onto inputs, nothing succeeded, special files -----------------
def test_an_output_onto_an_input_is_refused_before_anything_is_written(setup, tmp_path) -> None:
    run_dir, folder, _ = setup
    photo = tmp_path / "photo.png"
    shutil.copy(next((folder / "a").glob("*.png")), photo)
    before = photo.read_bytes()
    with pytest.raises(FashionTaggerError, match="is one of this command's inputs"):
        predict_paths(run_dir, [photo], photo, fmt="jsonl", progress=False)
    with pytest.raises(FashionTaggerError, match="is one of this command's inputs"):
        predict_paths(run_dir, [tmp_path], photo, fmt="jsonl", progress=False)  # found in a folder
    assert photo.read_bytes() == before
    weights = Path(run_dir) / "model.safetensors"
    saved = weights.read_bytes()
    with pytest.raises(
        FashionTaggerError, match=r"would overwrite model\.safetensors of the run dir"
    ):
        predict_paths(run_dir, [photo], weights, fmt="jsonl", progress=False)
    assert weights.read_bytes() == saved
    RunDir.open(run_dir)  # still loads


def test_onnx_export_never_overwrites_the_weights(setup) -> None:
    from fashion_tagger._io import check_output

    run_dir = Path(setup[0])
    for owned in ("model.safetensors", "model.json", "checkpoints/last.ckpt"):
        with pytest.raises(FashionTaggerError, match="of the run dir"):
            check_output(run_dir / owned)
    check_output(run_dir / "model.onnx")  # what export writes there by default


def test_every_input_failing_is_an_error_with_a_summary(setup, tmp_path) -> None:
    run_dir = setup[0]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    out = tmp_path / "p.jsonl"
    with pytest.raises(FashionTaggerError, match=r"none of the 2 inputs could be tagged"):
        predict_paths(run_dir, [tmp_path / "bad.jpg", tmp_path / "gone.jpg"], out, progress=False)
    assert not out.exists()


def test_a_fifo_is_refused_not_read(setup, tmp_path) -> None:
    import os

    run_dir, folder, _ = setup
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    good = next((folder / "a").glob("*.png"))
    out = tmp_path / "p.jsonl"
    summary = predict_paths(run_dir, [fifo, good], out, progress=False)  # returns: never blocks
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["images"] == 2 and summary["errors"] == 1
    assert "is a FIFO" in rows[0]["error"] and rows[1]["error"] is None


def test_an_unidentified_image_is_named_without_python_internals(setup, tmp_path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"GIF? no")
    good = next((Path(setup[1]) / "a").glob("*.png"))
    out = tmp_path / "p.jsonl"
    predict_paths(setup[0], [tmp_path / "bad.jpg", good], out, progress=False)
    error = json.loads(out.read_text().splitlines()[0])["error"]
    assert "BytesIO" not in error and "no image format recognised" in error


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(
        st.sampled_from(["good", "missing", "broken", "empty", "folder"]), min_size=1, max_size=5
    )
)
def test_exit_is_an_error_iff_nothing_succeeded_and_counts_add_up(setup, tmp_path, kinds) -> None:
    run_dir, folder, _ = setup
    good = sorted((folder / "a").glob("*.png"))
    work = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
    work.mkdir()
    inputs = []
    for i, kind in enumerate(kinds):
        p = work / f"{i}.png"
        if kind == "good":
            shutil.copy(good[i % len(good)], p)
        elif kind == "broken":
            p.write_bytes(b"\x89PNG broken")
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "folder":
            p.mkdir()
        inputs.append(p)
    n_good = kinds.count("good")
    out = work / "out.jsonl"
    try:
        summary = predict_paths(run_dir, inputs, out, progress=False)
    except FashionTaggerError as exc:
        assert n_good == 0, exc
        assert not out.exists()
        return
    assert n_good > 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["images"] == len(rows) and summary["errors"] == len(rows) - n_good
    assert sum(r["error"] is None for r in rows) == n_good
