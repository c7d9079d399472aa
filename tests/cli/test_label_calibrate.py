"""The `label` and `calibrate` commands as a user sees them: help, output, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from run_fixtures import shared_tiny_run
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.curation.label import DEFAULT_MIN_CONFIDENCE, label
from fashion_tagger.model.rundir import RunDir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    run, data = shared_tiny_run()
    tmp = tmp_path_factory.mktemp("cli")
    return shutil.copytree(run, tmp / "run"), data


def test_label_help_gives_the_default_and_what_it_buys():
    result = CliRunner().invoke(app, ["label", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert f"default: {DEFAULT_MIN_CONFIDENCE:g}" in text
    assert "precision" in text and "calibrate" in text
    import inspect

    assert inspect.signature(label).parameters["min_confidence"].default == DEFAULT_MIN_CONFIDENCE


@pytest.mark.parametrize("value", ["1.5", "-0.1", "high"])
def test_label_refuses_a_confidence_outside_0_1(tiny, tmp_path, value):
    run, _ = tiny
    result = CliRunner().invoke(
        app,
        ["label", str(run), str(tmp_path), "--out", str(tmp_path / "o"), "--min-confidence", value],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--min-confidence" in result.output


def test_calibrate_prints_temperatures_and_thresholds(tiny):
    run, data = tiny
    result = CliRunner().invoke(
        app, ["calibrate", str(run), str(data), "--no-progress"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "temperatures from val" in out and "thresholds from val" in out
    assert "path confidence ECE (15 bins) on val" in out
    assert "T kept at 1.0" in out  # the tiny val split has under 50 rows
    assert f"wrote {run / 'model.json'}" in out


def test_calibrate_json_holds_the_fit_and_model_json_keeps_it(tiny):
    run, data = tiny
    result = CliRunner().invoke(
        app, ["calibrate", str(run), str(data), "--split", "train", "--json"]
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    fit = r["temperature"]
    assert set(fit["temperature"]) == {"shape", "colour"}
    assert fit["ece_path"]["bins"] == 15 and fit["split"] == "train"
    config = RunDir.open(run).config
    assert config["temperature"] == pytest.approx(fit["temperature"], rel=1e-5)
    assert config["temperature_fit"]["ece_path"] == fit["ece_path"]
