"""`predict --engine ray` with an ONNX run: the CLI against `--engine local`, both places images
are decoded (`--decode actor` and `tasks`), and an ONNX actor that never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from run_fixtures import shared_tiny_run
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.inference.onnx import export_onnx
from fashion_tagger.inference.ray_predict import DECODE_MODES, predict_ray

ray = pytest.importorskip("ray")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_photos(tmp_path_factory) -> tuple[Path, Path]:
    """(run_dir with model.onnx, folder of 40 images of which one is broken)."""
    tiny_run, dataset_dir = shared_tiny_run()
    base = tmp_path_factory.mktemp("onnx")
    run_dir = base / "run"
    shutil.copytree(tiny_run, run_dir)
    export_onnx(run_dir)
    folder = base / "photos"
    folder.mkdir()
    ds = Dataset.open(dataset_dir)
    for i, rel in enumerate(ds.table.column("image").to_pylist()[:39]):
        shutil.copyfile(dataset_dir / rel, folder / f"img{i:02d}.png")
    (folder / "zz-broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return run_dir, folder


def _parts(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


def _scores(row: dict) -> list[float]:
    return [p["score"] for p in row["path"]] + [t["score"] for t in row["top_k"]]


def _assert_equal_rows(got: pa.Table, want: pa.Table) -> None:
    """Same images in the same order, same labels, scores within 1e-5, same errors."""
    assert got.schema.equals(want.schema)
    assert got.column("image").to_pylist() == want.column("image").to_pylist()
    for g, w in zip(got.to_pylist(), want.to_pylist(), strict=True):
        assert (g["error"] is None) == (w["error"] is None), g["image"]
        assert [p["label"] for p in g["path"]] == [p["label"] for p in w["path"]]
        assert [a["name"] for a in g["attributes"]] == [a["name"] for a in w["attributes"]]
        assert _scores(g) == pytest.approx(_scores(w), abs=1e-5)


def test_cli_ray_equals_local_and_resumes_one_partition(cluster, onnx_photos, tmp_path) -> None:
    run_dir, folder = onnx_photos
    runner = CliRunner()
    local = tmp_path / "local.parquet"
    result = runner.invoke(app, ["predict", str(run_dir), str(folder), "--out", str(local)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "ray"
    args = ["predict", str(run_dir), str(folder), "--engine", "ray", "--out", str(out)]
    args += ["--partition-size", "16", "--batch-size", "8", "--concurrency", "2", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["backend"] == "onnx"
    names = [f"part-{k:05d}.parquet" for k in range(3)]  # 40 images, 16 per partition
    assert sorted(p.name for p in out.glob("part-*.parquet")) == names
    _assert_equal_rows(_parts(out), pq.read_table(local))
    assert [r["image"] for r in _parts(out).to_pylist() if r["error"]] == [
        str(folder / "zz-broken.jpg")
    ]

    kept = {n: (out / n).stat().st_mtime_ns for n in names}
    (out / names[1]).unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written"] == [names[1]]
    now = {n: (out / n).stat().st_mtime_ns for n in names}
    assert now[names[0]] == kept[names[0]] and now[names[2]] == kept[names[2]]
    assert now[names[1]] > kept[names[1]]
    _assert_equal_rows(_parts(out), pq.read_table(local))


@pytest.mark.parametrize(
    ("decode", "cpus_per_actor", "decode_cpus"),
    [("tasks", 1.0, 0.5), ("tasks", 0.5, 0.5), ("actor", 2.0, 1.0)],
)
def test_both_decode_places_give_the_local_rows(
    cluster, onnx_photos, tmp_path, decode, cpus_per_actor, decode_cpus
) -> None:
    """Decode tasks apart from the actors, fused into them by Ray (equal resources), or the
    actor's own threads: the rows are the local predict's."""
    run_dir, folder = onnx_photos
    local = tmp_path / "local.parquet"
    from fashion_tagger.inference.predict import predict_paths

    predict_paths(run_dir, [folder], local, progress=False)
    out = tmp_path / "ray"
    summary = predict_ray(
        run_dir,
        folder,
        out,
        decode=decode,
        cpus_per_actor=cpus_per_actor,
        decode_cpus=decode_cpus,
        partition_size=25,
        batch_size=7,
    )
    assert (summary["images"], summary["errors"], summary["backend"]) == (40, 1, "onnx")
    _assert_equal_rows(_parts(out), pq.read_table(local))


def test_an_onnx_actor_does_not_import_torch(onnx_photos) -> None:
    """An actor process imports what its model needs: ONNX Runtime, not torch or Lightning."""
    run_dir, folder = onnx_photos
    code = (
        "import sys, numpy as np\n"
        "from fashion_tagger.inference.ray_predict import TaggerActor\n"
        f"a = TaggerActor({str(run_dir)!r}, 'auto', 3, decode_threads=2)\n"
        f"paths = sorted(str(p) for p in __import__('pathlib').Path({str(folder)!r}).iterdir())\n"
        "t = a({'path': np.array(paths, dtype=object), 'part': np.zeros(len(paths), int),"
        " 'pos': np.arange(len(paths))})\n"
        "assert t.num_rows == len(paths), t.num_rows\n"
        "print(a.tagger.backend_name, 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["onnx", "False", "False"]


@settings(max_examples=20, deadline=None)
@given(
    decode=st.text(min_size=1, max_size=8).filter(lambda s: s not in DECODE_MODES),
    backend=st.sampled_from(["tf", "ONNX", ""]),
)
def test_unknown_options_are_refused_before_ray_starts(onnx_photos, decode, backend) -> None:
    run_dir, folder = onnx_photos
    with pytest.raises(FashionTaggerError, match="--decode must be one of"):
        predict_ray(run_dir, folder, "never-written", decode=decode)
    with pytest.raises(FashionTaggerError, match="--backend must be one of"):
        predict_ray(run_dir, folder, "never-written", backend=backend)
    assert not Path("never-written").exists()


@pytest.mark.parametrize(
    ("resources", "num_gpus", "cpus_per_actor", "decode_cpus", "actors"),
    [
        ({"CPU": 16.0}, 0, 1, 0, 16),
        ({"CPU": 16.0}, 0, 3, 0, 5),
        ({"CPU": 1.0}, 0, 4, 0, 1),  # never none
        ({"CPU": 2.0}, 0, 1, 0.5, 1),  # decode tasks need a CPU the actors leave them
        ({"CPU": 64.0, "GPU": 8.0}, 1, 1, 1, 8),  # GPU actors: one per --num-gpus GPUs
        ({"CPU": 64.0, "GPU": 8.0}, 0.5, 1, 1, 16),
        ({"CPU": 8.0, "GPU": 8.0}, 1, 1, 1, 7),  # ... and CPUs for the actors and one decode task
        ({"CPU": 64.0}, 1, 1, 1, 1),
    ],
)
def test_default_concurrency_fills_the_cluster(
    resources, num_gpus, cpus_per_actor, decode_cpus, actors
):
    from fashion_tagger.inference.ray_predict import _fill_cluster

    assert _fill_cluster(resources, num_gpus, cpus_per_actor, decode_cpus) == actors
