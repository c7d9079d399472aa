"""The pipeline against object storage: import -> split -> train one epoch -> evaluate ->
predict, every verb given `s3://...` on a real S3-compatible server (moto, 127.0.0.1), with
training and prediction on "another machine" (an empty image cache)."""

from __future__ import annotations

import json

import pytest
from s3_server import s3_bucket_fixture, s3_endpoint_fixture  # noqa: F401 - fixtures
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.dataset.core import Dataset


def _invoke(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return res.stdout


@pytest.fixture
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_import_split_train_evaluate_predict_on_s3(
    s3, tmp_path, make_image, monkeypatch, one_thread
):
    for k, cls in enumerate(("shirts", "shoes", "bags")):
        for i in range(6):
            make_image(tmp_path / "src" / cls / f"{i}.jpg", size=(24, 24),
                       color=(80 * k, 10 * i, 255 - 80 * k))  # fmt: skip
    url = f"{s3}/products"
    _invoke("import", "folders", str(tmp_path / "src"), "--out", url, "--workers", "1")
    _invoke("dataset", "split", url, "--val", "0.2", "--test", "0.2")

    monkeypatch.setenv("FASHION_TAGGER_CACHE", str(tmp_path / "other-machine"))
    run = tmp_path / "run"
    out = _invoke(
        "train", url, "--out", str(run), "--epochs", "1", "--image-size", "16", "--hidden", "16",
        "--batch-size", "4", "--workers", "0", "--lr", "1e-3", "--no-progress", "--json",
    )  # fmt: skip
    summary = json.loads(out)
    assert summary["run_dir"] == str(run)
    model = json.loads((run / "model.json").read_text())
    train_rows = len(Dataset.open(url).split("train"))
    assert model["data"]["counts"]["train"] == train_rows  # every image fetched and decoded
    assert model["data"]["counts"]["unreadable_dropped"] == 0

    _invoke("evaluate", str(run), url, "--split", "test", "--backend", "torch", "--no-progress")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"]["n_images"] == len(Dataset.open(url).split("test"))

    preds = tmp_path / "preds.jsonl"
    _invoke("predict", str(run), url, "--out", str(preds), "--backend", "torch", "--no-progress")
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 18
    assert all(not r["error"] and r["path"] for r in rows)
