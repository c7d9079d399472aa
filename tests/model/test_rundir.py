"""The run dir contract: save, open, validate, update; tampering is a clear error."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from spec_fixtures import make_spec

from fashion_tagger.errors import RunDirError
from fashion_tagger.model import ModelSpec, RunDir, save_model
from fashion_tagger.model.load import build_model
from fashion_tagger.model.rundir import FORMAT_VERSION


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    torch.manual_seed(0)
    return save_model(
        tmp_path / "r1", build_model(make_spec()), make_spec(), {"metrics": {"val_acc_leaf": 0.5}}
    )


def test_save_and_open_round_trip(run: RunDir) -> None:
    again = RunDir.open(run.path)
    cfg = json.loads((run.path / "model.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION
    assert cfg["model_id"] == f"r1-{cfg['weights_sha256'][:12]}"
    assert again.spec.model_id == cfg["model_id"]
    assert again.spec.taxonomy == make_spec().taxonomy
    assert again.spec.input_size == (32, 24)
    assert again.spec.thresholds == [0.75, 0.75]
    assert cfg["input"] == {
        "size": [32, 24],
        "channels": 3,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "resize": "squash",
        "interpolation": "bilinear",
    }
    assert cfg["attributes"]["default_threshold"] == 0.75
    assert cfg["metrics"] == {"val_acc_leaf": 0.5}
    assert set(cfg) >= {"backbone", "head", "taxonomy", "training", "data", "weights_sha256"}


def _corrupt(path: Path, what: str) -> None:
    mj, w = path / "model.json", path / "model.safetensors"
    if what == "missing model.json":
        mj.unlink()
    elif what == "missing weights":
        w.unlink()
    elif what == "bad json":
        mj.write_text("{not json")
    elif what == "unknown version":
        mj.write_text(json.dumps({**json.loads(mj.read_text()), "format_version": 99}))
    elif what == "no input":
        d = json.loads(mj.read_text())
        del d["input"]
        mj.write_text(json.dumps(d))
    elif what == "tampered weights":
        data = bytearray(w.read_bytes())
        data[-1] ^= 0xFF
        w.write_bytes(bytes(data))
    elif what == "tampered taxonomy":
        d = json.loads(mj.read_text())
        d["taxonomy"]["nodes"][1][0]["parent"] = 7
        mj.write_text(json.dumps(d))


CASES = {
    "missing model.json": "model.json is missing",
    "missing weights": "model.safetensors is missing",
    "bad json": "not valid JSON",
    "unknown version": "format version 99",
    "no input": "malformed",
    "tampered weights": "does not match",
    "tampered taxonomy": "malformed",
}


@pytest.mark.parametrize("what", list(CASES))
def test_broken_run_dir_is_a_clear_error(run: RunDir, what: str) -> None:
    _corrupt(run.path, what)
    with pytest.raises(RunDirError, match=CASES[what]):
        RunDir.open(run.path)


def test_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        RunDir.open(tmp_path / "nope")


def test_update_model_json_is_atomic_and_validated(run: RunDir) -> None:
    attrs = {**run.config["attributes"], "thresholds": [0.1, 0.9]}
    updated = run.update_model_json(attributes=attrs)
    assert updated.spec.thresholds == [0.1, 0.9]
    assert RunDir.open(run.path).spec.thresholds == [0.1, 0.9]
    before = (run.path / "model.json").read_text()
    with pytest.raises(RunDirError, match="thresholds"):
        run.update_model_json(attributes={**attrs, "thresholds": [0.5]})
    assert (run.path / "model.json").read_text() == before
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]


def test_spec_validation() -> None:
    with pytest.raises(RunDirError, match="channels"):
        ModelSpec.from_json(
            {
                **make_spec().to_json(),
                "input": {"size": [8, 8], "channels": 2, "mean": [0, 0], "std": [1, 1]},
            }
        )
    spec = ModelSpec.from_json(make_spec().to_json())
    assert spec.to_json() == make_spec().to_json()


def test_cli_tampered_run_dir_is_one_line_error(
    run: RunDir, tmp_path: Path, monkeypatch, capsys
) -> None:
    from fashion_tagger.cli import main

    _corrupt(run.path, "tampered weights")
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (20, 20), "red").save(img)
    monkeypatch.setattr(sys, "argv", ["fashion-tagger", "predict", str(run.path), str(img)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "Traceback" not in err


def test_interpolation_round_trips_and_old_runs_read_bilinear():
    spec = make_spec()
    bicubic = dataclasses.replace(spec, interpolation="bicubic")
    assert ModelSpec.from_json(bicubic.to_json()).interpolation == "bicubic"
    old = spec.to_json()
    del old["input"]["interpolation"]  # run dirs written before the key existed
    assert ModelSpec.from_json(old).interpolation == "bilinear"
    with pytest.raises(RunDirError, match="interpolation"):
        dataclasses.replace(spec, interpolation="lanczos7")
