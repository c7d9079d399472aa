"""`fashion-tagger train`, `predict` and `quickstart`: build, use and demo a model."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from fashion_tagger.cli._app import PROGRESS, app, console, print_json
from fashion_tagger.errors import FashionTaggerError


def _image_size(value: str | None) -> tuple[int, int] | None:
    """`64` or `80x64` (H x W) to (H, W)."""
    if not value:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+))?\s*", value)
    if not m:
        raise FashionTaggerError(f"--image-size {value!r}: give N or HxW, e.g. 64 or 80x64")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


@app.command("train")
def train_cmd(
    dataset_dir: Path = typer.Argument(
        None, help="A split dataset dir (not needed with --resume)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Run dir to create."),
    resume: Path = typer.Option(
        None, "--resume", help="Continue this run dir from its last checkpoint."
    ),
    backbone: str = typer.Option(
        "simple-cnn", "--backbone", help="simple-cnn or any timm model name."
    ),
    head: str = typer.Option("unified", "--head", help="unified, multi or flat."),
    image_size: str = typer.Option(
        None, "--image-size", help="N or HxW (default: the backbone's)."
    ),
    channels: int = typer.Option(3, "--channels", help="3 (RGB) or 1 (grey)."),
    resize: str = typer.Option(
        "squash", "--resize", help="squash or pad (keep aspect, pad white)."
    ),
    epochs: int = typer.Option(10, "--epochs"),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: str = typer.Option("2e-3", "--lr", help="Peak learning rate, or auto (LR finder)."),
    weight_decay: float = typer.Option(
        5e-4, "--weight-decay", help="AdamW weight decay of the backbone."
    ),
    schedule: str = typer.Option("onecycle", "--schedule", help="onecycle, cosine or constant."),
    hidden: int = typer.Option(1024, "--hidden", help="Units per head branch."),
    dropout: float = typer.Option(0.3, "--dropout"),
    messages: str = typer.Option(
        "label", "--messages", help="Unified head: levels pass label (class) or latent messages."
    ),
    head_weight_decay: float = typer.Option(
        5e-4, "--head-weight-decay", help="L2 of the head branches."
    ),
    freeze_backbone_epochs: int = typer.Option(
        0, "--freeze-backbone-epochs", help="Heads only for N epochs, then all."
    ),
    freeze_backbone: bool = typer.Option(
        False, "--freeze-backbone", help="Train heads only, on cached features."
    ),
    pretrained: bool = typer.Option(
        False, "--pretrained", help="timm's ImageNet weights (online)."
    ),
    weights: Path = typer.Option(
        None, "--weights", help="Local backbone weights (safetensors / state dict)."
    ),
    class_weights: str = typer.Option(
        "inverse",
        "--class-weights",
        help="inverse (the paper: rare classes gain recall), sqrt (milder), or none (best "
        "top-1 accuracy).",
    ),
    augment: bool = typer.Option(
        False, "--augment", help="Flip, colour, shift-scale-rotate, blur, noise."
    ),
    augment_light: bool = typer.Option(
        False,
        "--augment-light",
        help="Flip and a 2-pixel shift only: nearly free, for short budgets.",
    ),
    label_smoothing: float = typer.Option(
        0.0, "--label-smoothing", help="Label smoothing of the level losses (e.g. 0.1)."
    ),
    precision: str = typer.Option(
        "32-true", "--precision", help="Lightning precision, e.g. bf16-mixed."
    ),
    devices: str = typer.Option("auto", "--devices", help="Devices per node (auto, N)."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Machines for multi-node DDP."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(2, "--workers", help="Processes decoding images into the cache."),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="Keep decoded images here between runs."
    ),
    max_time: str = typer.Option(
        None,
        "--max-time",
        help="Time budget, minutes or HH:MM:SS: the LR schedule follows the clock and training "
        "ends on time with it finished, after a last validation.",
    ),
    checkpoint_every: int = typer.Option(
        200, "--checkpoint-every", help="Also checkpoint every N steps."
    ),
    train_fraction: float = typer.Option(
        1.0, "--train-fraction", help="Share of train batches per epoch (short budgets)."
    ),
    progress: bool = PROGRESS,
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Train a hierarchical classifier (backbone + unified/multi/flat head) into a run dir.

    Example: fashion-tagger train data/products --out runs/p1 --image-size 80x64 --epochs 10 --augment
    """
    from fashion_tagger.training.config import DataConfig, ModelConfig, TrainConfig
    from fashion_tagger.training.train import train

    if resume is not None:
        run = train(dataset_dir, resume, None, resume=True)
    else:
        if dataset_dir is None or out is None:
            raise FashionTaggerError("give DATASET_DIR and --out RUN_DIR (or --resume RUN_DIR)")
        if augment and augment_light:
            raise FashionTaggerError("--augment and --augment-light: pick one")
        mode = "full" if augment else "light" if augment_light else "none"
        config = TrainConfig(
            data=DataConfig(
                image_size=_image_size(image_size), channels=channels, resize=resize,
                augment=mode, class_weights=class_weights, workers=workers,
                cache_dir=str(cache_dir) if cache_dir else None,
            ),
            model=ModelConfig(
                backbone=backbone, head=head, hidden=hidden, dropout=dropout, messages=messages,
                head_weight_decay=head_weight_decay, pretrained=pretrained,
                weights=str(weights) if weights else None, freeze_backbone=freeze_backbone,
                freeze_backbone_epochs=freeze_backbone_epochs,
            ),
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            schedule=schedule, label_smoothing=label_smoothing, precision=precision,
            devices=_devices(devices), num_nodes=num_nodes, seed=seed, max_time=max_time,
            checkpoint_every=checkpoint_every, train_fraction=train_fraction, progress=progress,
        )  # fmt: skip
        run = train(dataset_dir, out, config)
    summary = {
        "run_dir": str(run.path),
        "model_id": run.spec.model_id,
        "metrics": run.config.get("metrics", {}),
        "throughput": run.config.get("training", {}).get("throughput", {}),
        "seconds": run.config.get("training", {}).get("seconds"),
    }
    if as_json:
        print_json(summary)
        return
    console.print(f"trained [bold]{run.spec.model_id}[/] in {summary['seconds']} s -> {run.path}")
    for key, value in summary["metrics"].items():
        if key.startswith("val_acc"):
            console.print(f"  {key}: {100 * value:.1f} %")


@app.command("predict")
def predict_cmd(
    run_dir: Path = typer.Argument(..., help="A run dir (written by train)."),
    paths: list[str] = typer.Argument(..., help="Image files, folders (recursive) or globs."),
    out: Path = typer.Option(None, "--out", "-o", help="Output file (default: jsonl on stdout)."),
    fmt: str = typer.Option(None, "--format", help="jsonl, csv or parquet (default: from --out)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Leaves listed per image."),
    backend: str = typer.Option(
        "auto", "--backend", help="auto (ONNX if exported), torch or onnx."
    ),
    progress: bool = PROGRESS,
) -> None:
    """Tag images with a trained model: one row per image (path with scores, top-k, attributes).

    Example: fashion-tagger predict runs/p1 photos/ 'more/*.jpg' --out preds.parquet
    """
    from fashion_tagger.inference.predict import predict_paths

    summary = predict_paths(
        run_dir, paths, out, fmt=fmt, batch_size=batch_size, top_k=top_k, backend=backend,
        progress=progress and out is not None,
    )  # fmt: skip
    if out is not None:
        console.print(
            f"{summary['images']:,} images ({summary['errors']} unreadable) -> {out} "
            f"[{summary['format']}, {summary['backend']}]"
        )


@app.command("quickstart")
def quickstart_cmd(
    data: Path = typer.Option(
        None,
        "--data",
        help="Kaggle products zip/folder, folder tree or Fashion-MNIST CSV (default: download Fashion-MNIST).",
    ),
    out: Path = typer.Option(
        Path("quickstart-out"), "--out", "-o", help="Where the dataset, run and predictions go."
    ),
    minutes: float = typer.Option(3.0, "--minutes", help="Training time budget."),
    workers: int = typer.Option(None, "--workers", help="Decoding processes."),
    progress: bool = PROGRESS,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Import, split, train a small model for a few minutes, evaluate it and tag a few images.

    Example: fashion-tagger quickstart --data ../shared/datasets/fashion-product-images-small.zip --out demo-out
    """
    from fashion_tagger.quickstart import quickstart

    s = quickstart(data, out, minutes, workers=workers, progress=progress)
    if as_json:
        print_json(s)
        return
    console.print(
        f"[bold green]done[/] ({s['kind']}, {s['epochs']} epochs, {s['train_seconds']} s of training)"
    )
    for level, acc in s["accuracy"].items():
        console.print(f"  {s['split']} accuracy {level}: {100 * acc:.1f} %")
    for key in ("dataset_dir", "run_dir", "metrics", "report", "predictions"):
        console.print(f"  {key.replace('_', ' ')}: {s[key]}")
