"""The real service (real model, ONNX backend, loaded in lifespan) under concurrent load."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from run_fixtures import make_synthetic_dataset
from serve_fakes import make_random_run, serve_in_thread
from typer.testing import CliRunner

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.inference.onnx import export_onnx
from fashion_tagger.inference.tagger import Tagger
from fashion_tagger.serving.app import create_app
from fashion_tagger.serving.settings import Settings


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("load")
    dataset = make_synthetic_dataset(root / "dataset", n=24, seed=2)
    run = make_random_run(root / "run", dataset)
    export_onnx(run, max_images=8)
    ds = Dataset.open(dataset)
    return run, [ds.image_path(i) for i in range(len(ds))]


def test_200_requests_at_concurrency_16_all_succeed_and_match_offline(run_and_images):
    run, images = run_and_images
    offline = Tagger.load(run, "onnx").predict(images, batch_size=32)
    expected = {str(p): [s["label"] for s in q.path] for p, q in zip(images, offline, strict=True)}
    payloads = [(p.name, p.read_bytes()) for p in images]
    app = create_app(Settings(run_dir=run, max_batch=32, max_wait_ms=5))

    async def load(base: str) -> tuple[list[tuple[int, str, list[str]]], httpx.Response, str]:
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:

            async def one(i: int) -> tuple[int, str, list[str]]:
                name, data = payloads[i % len(payloads)]
                async with sem:
                    r = await client.post("/v1/predict", files={"files": (name, data, "image/png")})
                labels = (
                    [s["label"] for s in r.json()["predictions"][0]["path"]]
                    if r.status_code == 200
                    else []
                )
                return r.status_code, str(images[i % len(images)]), labels

            results = await asyncio.gather(*(one(i) for i in range(200)))
            health = await client.get("/healthz")
            metrics = (await client.get("/metrics")).text
        return results, health, metrics

    with serve_in_thread(app) as base:
        results, health, metrics = asyncio.run(load(base))
    assert [s for s, _, _ in results] == [200] * 200
    assert all(labels == expected[path] for _, path, labels in results)  # batching never mixes rows
    assert health.status_code == 200 and health.json()["backend"] == "onnx"
    assert 'route="/v1/predict",method="POST",status="200"} 200' in metrics
    assert "fashion_tagger_images_total 200" in metrics
    batches = int(re.search(r"fashion_tagger_batch_size_count (\d+)", metrics).group(1))
    assert batches < 200  # concurrent requests shared model calls


def test_serve_verb_loads_the_model_and_starts_uvicorn(run_and_images, monkeypatch):
    import uvicorn

    run, _ = run_and_images
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    from fashion_tagger.cli import app as cli

    result = CliRunner().invoke(
        cli,
        [
            "serve",
            str(run),
            "--port",
            "8123",
            "--max-batch",
            "8",
            "--max-images",
            "3",
            "--backend",
            "torch",
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    state = seen["app"].state
    assert state.predictor.backend_name == "torch" and state.settings.max_images == 3
    assert state.settings.max_batch == 8 and not state.settings.allow_private_urls
    bad = CliRunner().invoke(cli, ["serve", str(run), "--max-batch", "0"])
    assert bad.exit_code != 0 and "--max-batch" in str(bad.exception)
