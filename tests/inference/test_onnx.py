"""ONNX export and runtime: one graph with its metadata, parity with PyTorch, same paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from run_fixtures import make_synthetic_dataset
from serve_fakes import make_random_run as make_run
from typer.testing import CliRunner

import fashion_tagger.inference.onnx as fonnx
from fashion_tagger.cli import app
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import RunDirError
from fashion_tagger.inference.onnx import OnnxBackend, check_parity, export_onnx, read_metadata
from fashion_tagger.inference.tagger import Tagger
from fashion_tagger.model.load import build_model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("ds") / "dataset", n=40, seed=1)


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset) -> Path:
    # random weights: seed 2 gives a model whose paths vary over these images (seed 0 became
    # constant when the unified head lost its unused deepest auxiliary classifier)
    return make_run(tmp_path_factory.mktemp("run") / "run", dataset, seed=2)


@pytest.fixture(scope="module")
def exported(run) -> fonnx.ExportResult:
    return export_onnx(run)


def test_export_is_one_graph_with_metadata_and_a_dynamic_batch(run, dataset, exported):
    import onnx

    assert exported.path == run / "model.onnx" and exported.path.is_file()
    assert exported.parity.ok and exported.parity.max_abs_diff <= 1e-4
    assert exported.parity.real_images == 40 and exported.parity.image_source == str(dataset)
    assert exported.parity.path_mismatches == 0
    model = onnx.load(str(exported.path))
    assert [i.name for i in model.graph.input] == ["image"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert [o.name for o in model.graph.output] == ["level_0", "level_1", "attributes"]
    assert model.opset_import[0].version == 17
    meta = read_metadata(exported.path)
    config = json.loads((run / "model.json").read_text())
    assert meta["model_id"] == config["model_id"] == exported.model_id
    assert meta["taxonomy"] == config["taxonomy"]
    assert meta["input"] == {
        "size": [32, 32],
        "channels": 3,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "resize": "squash",
        "interpolation": "bilinear",
    }
    assert meta["temperature"] == config["temperature"]
    assert (
        meta["attributes"]["names"]
        == config["attributes"]["names"]
        == ["pattern=striped", "size=big", "size=small"]
    )
    assert meta["attributes"]["thresholds"] == [0.75] * 3
    assert meta["backbone"]["name"] == "simple-cnn" and meta["head"]["kind"] == "unified"
    assert not list(run.glob(".model.onnx.*"))  # no temp file left behind


def test_onnx_backend_gives_torch_probabilities_and_paths(run, dataset, exported):
    files = [Dataset.open(dataset).image_path(i) for i in range(40)]
    onnx_tagger, torch_tagger = Tagger.load(run, "onnx"), Tagger.load(run, "torch")
    assert Tagger.load(run, "auto").backend_name == "onnx"
    assert isinstance(onnx_tagger.backend, OnnxBackend)
    a, b = onnx_tagger.predict(files, batch_size=7), torch_tagger.predict(files, batch_size=16)
    assert [p.labels for p in a] == [p.labels for p in b]
    assert len({tuple(p.labels) for p in a}) > 1  # not a constant model: the check means something
    for p, q in zip(a, b, strict=True):
        assert [s["score"] for s in p.path] == pytest.approx([s["score"] for s in q.path], abs=1e-4)
        assert [x["name"] for x in p.attributes] == [x["name"] for x in q.attributes]
    one = onnx_tagger.backend(np.zeros((1, 3, 32, 32), np.float32))
    assert [o.shape for o in one] == [(1, 2), (1, 5), (1, 3)]
    assert np.allclose(one[0].sum(1), 1.0, atol=1e-5) and np.allclose(one[1].sum(1), 1.0, atol=1e-5)


def test_torch_and_onnx_stay_equal_with_temperatures(tmp_path, run, dataset, exported):
    """Temperatures live in model.json, outside the graph, and are applied where both backends
    meet (`Tagger.predict_arrays`): a refit needs no re-export and both still agree."""
    from fashion_tagger.model.rundir import RunDir

    hot = tmp_path / "run"
    shutil.copytree(run, hot)
    RunDir.open(hot).update_model_json(temperature={"shape": 0.4, "colour": 20.0})
    files = [Dataset.open(dataset).image_path(i) for i in range(40)]
    plain = Tagger.load(run, "torch").predict(files)
    onnx_t, torch_t = Tagger.load(hot, "onnx"), Tagger.load(hot, "torch")
    assert onnx_t.spec.temperatures == torch_t.spec.temperatures == (0.4, 20.0)
    a, b = onnx_t.predict(files, batch_size=7), torch_t.predict(files, batch_size=16)
    assert [p.labels for p in a] == [p.labels for p in b]
    for p, q in zip(a, b, strict=True):
        assert [s["score"] for s in p.path] == pytest.approx([s["score"] for s in q.path], abs=1e-4)
        assert p.top_k[0]["score"] == pytest.approx(q.top_k[0]["score"], abs=1e-4)
    # and they did act, as softmax(log p / T) of the model's own probabilities per level
    from fashion_tagger.model.preprocess import load_for_model

    x = np.stack([load_for_model(f, onnx_t.spec) for f in files])
    raw, scaled = Tagger.load(run, "torch").predict_arrays(x), onnx_t.predict_arrays(x)
    for p, t, got in zip(raw.levels, (0.4, 20.0), scaled.levels, strict=True):
        z = np.log(np.maximum(p.astype(np.float64), 1e-12)) / t
        want = np.exp(z - z.max(1, keepdims=True))
        assert np.allclose(got, want / want.sum(1, keepdims=True), atol=1e-4)
    # this random model is saturated (p of 0 or 1), so only a large T shows: flatter colours
    assert (scaled.levels[1].max(1) < raw.levels[1].max(1) - 0.01).all()
    assert [p.top_k[0]["score"] for p in a] != pytest.approx([q.top_k[0]["score"] for q in plain])


def test_parity_check_catches_a_different_graph(run, dataset, exported):
    other = build_model(Tagger.load(run, "torch").spec)  # same shape, other random weights
    report = check_parity(other.eval(), Tagger.load(run, "torch").spec, exported.path)
    assert not report.ok and report.max_abs_diff > 1e-3
    assert report.random_inputs == 8 and report.images == 8


def test_cli_export_json_with_images_folder_and_out(tmp_path, run, dataset):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        shutil.copy(Dataset.open(dataset).image_path(i), images / f"{i}.png")
    out = tmp_path / "exported" / "m.onnx"
    result = CliRunner().invoke(
        app,
        [
            "export",
            str(run),
            "--format",
            "onnx",
            "--out",
            str(out),
            "--opset",
            "18",
            "--images",
            str(images),
            "--json",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["ok"] is True and body["path"] == str(out) and out.is_file()
    assert body["opset"] == 18 and body["parity"]["real_images"] == 3 and body["parity"]["ok"]
    assert body["outputs"] == ["level_0", "level_1", "attributes"]


def test_cli_parity_failure_exits_non_zero_with_the_numbers(tmp_path, run, dataset, monkeypatch):
    real_export = fonnx.export_module

    def export_other_weights(module, spec, out, opset=17):
        return real_export(build_model(spec).eval(), spec, out, opset)

    monkeypatch.setattr(fonnx, "export_module", export_other_weights)
    out = tmp_path / "bad.onnx"
    result = CliRunner().invoke(
        app, ["export", str(run), "--out", str(out), "--json", "--no-progress"]
    )
    assert result.exit_code == 1, result.output
    body = json.loads(result.output)
    assert body["ok"] is False and body["parity"]["max_abs_diff"] > 1e-4
    assert "max abs difference" in body["error"]
    assert not out.exists() and not list(tmp_path.glob(".bad.onnx.*"))  # nothing half-written


def test_cli_refuses_unknown_format_and_missing_run(tmp_path, run):
    r = CliRunner().invoke(app, ["export", str(run), "--format", "tflite"])
    assert r.exit_code == 2 and "--format" in r.output
    from fashion_tagger.cli import main  # the real entry point turns errors into one line

    with pytest.raises(SystemExit) as exc:
        import sys

        argv, sys.argv = sys.argv, ["fashion-tagger", "export", str(tmp_path / "nope")]
        try:
            main()
        finally:
            sys.argv = argv
    assert exc.value.code == 2


def test_a_stale_onnx_from_another_model_is_refused(tmp_path, dataset, exported):
    other = make_run(tmp_path / "other", dataset, seed=5)
    shutil.copy(exported.path, other / "model.onnx")
    with pytest.raises(RunDirError, match="re-run `fashion-tagger export"):
        OnnxBackend(other / "model.onnx")


def test_models_without_attributes_and_other_heads_export(tmp_path, dataset):
    run = make_run(tmp_path / "flat", dataset, head="flat", attributes=False)
    result = export_onnx(run)
    assert result.parity.ok
    out = OnnxBackend(result.path)(np.zeros((4, 3, 32, 32), np.float32))
    assert out[-1].shape == (4, 0)


def test_a_timm_backbone_exports_with_parity(tmp_path, dataset):
    run = make_run(tmp_path / "mnv3", dataset, backbone="mobilenetv3_small_050", size=32)
    result = export_onnx(run, max_images=4)
    assert result.parity.ok and result.parity.real_images == 4


def test_predict_verb_gives_the_same_paths_with_both_backends(run, dataset, exported):
    folder = str(Dataset.open(dataset).root / "images")
    paths = {}
    for backend in ("onnx", "torch"):
        r = CliRunner().invoke(app, ["predict", str(run), folder, "--backend", backend])
        assert r.exit_code == 0, r.output
        rows = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
        paths[backend] = {row["image"]: [s["label"] for s in row["path"]] for row in rows}
    assert len(paths["onnx"]) == 40 and paths["onnx"] == paths["torch"]


# -- int8 --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained() -> tuple[Path, Path]:
    from run_fixtures import shared_tiny_run

    return shared_tiny_run()  # trained: its paths are clear-cut, as a real model's are


def test_int8_export_is_quantised_keeps_the_paths_and_the_metadata(tmp_path, trained):
    import onnx

    run_dir, _ = trained
    result = export_onnx(run_dir, tmp_path / "q.onnx", quantize="int8", calibration_images=32)
    p = result.parity
    assert p.quantization == "int8" and p.ok and p.random_inputs == 0 and p.real_images > 0
    assert p.path_mismatches <= 0.02 * p.images
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = read_metadata(result.path)
    assert meta["quantization"] == "int8"
    assert meta["taxonomy"] == Tagger.load(run_dir, "torch").spec.taxonomy.to_dict()
    # through the normal backend, the int8 graph tags real images as PyTorch does
    _, dataset_dir = trained
    ds = Dataset.open(dataset_dir)
    images = [ds.image_path(i) for i in range(len(ds)) if ds.table["split"][i].as_py() == "test"]
    torch_paths = [p.labels for p in Tagger.load(run_dir, "torch").predict(images)]
    int8 = Tagger.load(run_dir, "torch")
    int8.backend = OnnxBackend(result.path)
    int8_paths = [p.labels for p in int8.predict(images)]
    same = sum(a == b for a, b in zip(torch_paths, int8_paths, strict=True))
    assert len(images) >= 30 and same >= 0.95 * len(images)
    assert result.to_dict()["quantization"] == "int8"


def test_int8_export_refuses_to_write_a_graph_that_changes_answers(tmp_path, trained):
    run_dir, _ = trained
    out = tmp_path / "q.onnx"
    with pytest.raises(fonnx.ParityError, match="changes the predicted path") as exc:
        export_onnx(run_dir, out, quantize="int8", calibration_images=16, max_path_mismatch=-1)
    assert exc.value.report.quantization == "int8"
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_int8_export_needs_real_images_and_a_known_scheme(tmp_path, trained, monkeypatch):
    from fashion_tagger.errors import FashionTaggerError

    run_dir, _ = trained
    with pytest.raises(FashionTaggerError, match="--quantize"):
        export_onnx(run_dir, tmp_path / "q.onnx", quantize="int4")
    monkeypatch.setattr(fonnx, "_dataset_images", lambda run, limit, split="test": ([], None))
    with pytest.raises(FashionTaggerError, match="needs real images"):
        export_onnx(run_dir, tmp_path / "q.onnx", quantize="int8")


def test_cli_export_int8_json_and_the_service_says_so(tmp_path, trained):
    from fashion_tagger.serving.predictor import TaggerPredictor

    run_dir = shutil.copytree(trained[0], tmp_path / "run")
    r = CliRunner().invoke(
        app, ["export", str(run_dir), "--quantize", "int8", "--json", "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    body = json.loads(r.output)
    assert (
        body["ok"] and body["quantization"] == "int8" and body["parity"]["quantization"] == "int8"
    )
    assert body["path"] == str(run_dir / "model.onnx")
    served = TaggerPredictor.load(run_dir)  # auto: the int8 model.onnx
    assert served.backend_name == "onnx" and served.info()["quantization"] == "int8"
    assert TaggerPredictor.load(run_dir, "torch").info()["quantization"] is None


def test_export_onto_the_weights_is_refused_and_the_run_still_loads(tmp_path) -> None:
    from run_fixtures import shared_tiny_run

    from fashion_tagger.errors import FashionTaggerError
    from fashion_tagger.model.rundir import RunDir

    src, _ = shared_tiny_run()
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    weights = (run_dir / "model.safetensors").read_bytes()
    with pytest.raises(FashionTaggerError, match=r"would overwrite model\.safetensors"):
        export_onnx(run_dir, run_dir / "model.safetensors")
    assert (run_dir / "model.safetensors").read_bytes() == weights
    RunDir.open(run_dir)
