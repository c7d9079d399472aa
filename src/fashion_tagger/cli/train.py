"""`fashion-tagger train`, `predict` and `quickstart`: build, use and demo a model."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from fashion_tagger.cli._app import PROGRESS, app, console, print_json
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.model.spec import head_kinds
from fashion_tagger.training.config import SCHEDULES, DataConfig, ModelConfig, TrainConfig


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


_T = TrainConfig()
_D, _M = _T.data, _T.model
"""Defaults come from the config dataclasses: one source of truth for the CLI and the API."""

_opt = typer.Option
BACKBONE = _opt(_M.backbone, "--backbone", help="simple-cnn or any timm model name.")
HEAD = _opt(_M.head, "--head", help=f"{', '.join(head_kinds())}.")
IMAGE_SIZE = _opt(None, "--image-size", help="N or HxW (default: the backbone's).")
CHANNELS = _opt(_D.channels, "--channels", help="3 (RGB) or 1 (grey).")
RESIZE = _opt(
    _D.resize,
    "--resize",
    help="squash; pad (keep the aspect, pad white); or fashion-mnist (Zalando's conversion, for a "
    "model trained on Fashion-MNIST that tags real product photos).",
)
EPOCHS = _opt(
    None,
    "--epochs",
    help=f"Passes over the train split (default: as many as fit --max-time, else {_T.epochs}).",
)
BATCH_SIZE = _opt(_T.batch_size, "--batch-size", help="Images per training step.")
LR = _opt(str(_T.lr), "--lr", help="Peak learning rate, or auto (LR finder).")
WEIGHT_DECAY = _opt(_T.weight_decay, "--weight-decay", help="AdamW weight decay of the backbone.")
SCHEDULE = _opt(_T.schedule, "--schedule", help=f"{', '.join(SCHEDULES)}.")
HIDDEN = _opt(_M.hidden, "--hidden", help="Units per head branch.")
DROPOUT = _opt(_M.dropout, "--dropout", help="Dropout of the head branches.")
MESSAGES = _opt(
    _M.messages, "--messages", help="Unified head: levels pass label (class) or latent messages."
)
HEAD_WD = _opt(_M.head_weight_decay, "--head-weight-decay", help="L2 of the head branches.")
FREEZE_EPOCHS = _opt(
    _M.freeze_backbone_epochs,
    "--freeze-backbone-epochs",
    help="Heads only for N epochs, then all (default: 1 with pretrained weights, else 0).",
)
FREEZE = _opt(_M.freeze_backbone, "--freeze-backbone", help="Train heads only, on cached features.")
BACKBONE_LR = _opt(
    _M.backbone_lr_scale,
    "--backbone-lr-scale",
    help="Backbone LR as a share of the heads' (default: 0.1 with pretrained weights, else 1).",
)
FREEZE_BN = _opt(
    _M.freeze_bn,
    "--freeze-bn/--no-freeze-bn",
    help="Keep the backbone's batch-norm statistics (default: on when pretrained and batches < 16).",
)
CHANNELS_LAST = _opt(
    _M.channels_last,
    "--channels-last/--no-channels-last",
    help="NHWC memory layout (default: on for timm backbones, faster on CPU).",
)
PRETRAINED = _opt(_M.pretrained, "--pretrained", help="timm's ImageNet weights (online).")
WEIGHTS = _opt(
    None,
    "--weights",
    help="Pretrained backbone weights: lite0 (installed, offline), lite1, lite2, timm (online), "
    "a local safetensors / state dict file, or none.",
)
CLASS_WEIGHTS = _opt(
    _D.class_weights,
    "--class-weights",
    help="inverse (the paper: rare classes gain recall), sqrt (milder), or none (best top-1).",
)
AUGMENT = _opt(False, "--augment", help="Flip, colour, shift-scale-rotate, blur, noise.")
AUGMENT_LIGHT = _opt(
    False, "--augment-light", help="Flip and a 2-pixel shift only: nearly free, for short budgets."
)
SMOOTHING = _opt(
    _T.label_smoothing, "--label-smoothing", help="Label smoothing of the level losses (e.g. 0.1)."
)
PRECISION = _opt(_T.precision, "--precision", help="Lightning precision, e.g. bf16-mixed.")
ACCELERATOR = _opt(_T.accelerator, "--accelerator", help="Lightning accelerator: auto, cpu, gpu.")
STRATEGY = _opt(_T.strategy, "--strategy", help="Lightning strategy: auto, ddp, fsdp ...")
DEVICES = _opt(str(_T.devices), "--devices", help="Devices per node (auto, N).")
NUM_NODES = _opt(_T.num_nodes, "--num-nodes", help="Machines for multi-node DDP.")
SEED = _opt(_T.seed, "--seed", help="Same seed, same initial weights and batch order.")
TRAIN_WORKERS = _opt(_D.workers, "--workers", help="Processes decoding images into the cache.")
CACHE_DIR = _opt(None, "--cache-dir", help="Keep decoded images here between runs.")
MAX_TIME = _opt(
    None,
    "--max-time",
    help="Time budget, minutes or HH:MM:SS: the LR schedule follows the clock and training ends "
    "on time with it finished, after a last validation.",
)
CHECKPOINT_EVERY = _opt(
    _T.checkpoint_every, "--checkpoint-every", help="Also checkpoint every N steps."
)
TRAIN_FRACTION = _opt(
    _T.train_fraction, "--train-fraction", help="Share of train batches per epoch (short budgets)."
)


@app.command("train")
def train_cmd(
    dataset_dir: str = typer.Argument(
        None, help="A split dataset dir, local or a URL like s3://bucket/data (not with --resume)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Run dir to create."),
    resume: Path = typer.Option(
        None, "--resume", help="Continue this run dir from its last checkpoint."
    ),
    backbone: str = BACKBONE,
    head: str = HEAD,
    image_size: str = IMAGE_SIZE,
    channels: int = CHANNELS,
    resize: str = RESIZE,
    epochs: int | None = EPOCHS,
    batch_size: int = BATCH_SIZE,
    lr: str = LR,
    weight_decay: float = WEIGHT_DECAY,
    schedule: str = SCHEDULE,
    hidden: int = HIDDEN,
    dropout: float = DROPOUT,
    messages: str = MESSAGES,
    head_weight_decay: float = HEAD_WD,
    freeze_backbone_epochs: int = FREEZE_EPOCHS,
    freeze_backbone: bool = FREEZE,
    backbone_lr_scale: float = BACKBONE_LR,
    freeze_bn: bool = FREEZE_BN,
    channels_last: bool = CHANNELS_LAST,
    pretrained: bool = PRETRAINED,
    weights: str = WEIGHTS,
    class_weights: str = CLASS_WEIGHTS,
    augment: bool = AUGMENT,
    augment_light: bool = AUGMENT_LIGHT,
    label_smoothing: float = SMOOTHING,
    precision: str = PRECISION,
    accelerator: str = ACCELERATOR,
    strategy: str = STRATEGY,
    devices: str = DEVICES,
    num_nodes: int = NUM_NODES,
    seed: int = SEED,
    workers: int = TRAIN_WORKERS,
    cache_dir: Path = CACHE_DIR,
    max_time: str = MAX_TIME,
    checkpoint_every: int = CHECKPOINT_EVERY,
    train_fraction: float = TRAIN_FRACTION,
    progress: bool = PROGRESS,
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Train a hierarchical classifier (backbone + unified/multi/flat head) into a run dir.

    Example: fashion-tagger train data/products --out runs/p1 --weights lite0 --max-time 30

    From scratch: fashion-tagger train data/products --out runs/s1 --image-size 80x64 --epochs 10
    """
    from fashion_tagger.training.train import train

    if resume is not None:
        run = train(dataset_dir, resume, None, resume=True)
    else:
        if dataset_dir is None or out is None:
            raise FashionTaggerError("give DATASET_DIR and --out RUN_DIR (or --resume RUN_DIR)")
        if augment and augment_light:
            raise FashionTaggerError("--augment and --augment-light: pick one")
        config = TrainConfig(
            data=DataConfig(
                image_size=_image_size(image_size), channels=channels, resize=resize,
                augment="full" if augment else "light" if augment_light else _D.augment,
                class_weights=class_weights, workers=workers,
                cache_dir=str(cache_dir) if cache_dir else None,
            ),
            model=ModelConfig(
                backbone=backbone, head=head, hidden=hidden, dropout=dropout, messages=messages,
                head_weight_decay=head_weight_decay, pretrained=pretrained,
                weights=weights, freeze_backbone=freeze_backbone,
                freeze_backbone_epochs=freeze_backbone_epochs,
                backbone_lr_scale=backbone_lr_scale, freeze_bn=freeze_bn,
                channels_last=channels_last,
            ),
            epochs=_T.epochs if epochs is None else epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            schedule=schedule, label_smoothing=label_smoothing, precision=precision,
            accelerator=accelerator, strategy=strategy,
            devices=_devices(devices), num_nodes=num_nodes, seed=seed, max_time=max_time,
            checkpoint_every=checkpoint_every, train_fraction=train_fraction, progress=progress,
        )  # fmt: skip
        if epochs is None and config.max_time:  # size the run to its budget on this machine
            config = _fit_budget(config, dataset_dir, quiet=as_json)
        run = train(dataset_dir, out, config)
    if run.config:  # rank 0 of a distributed run, or a single process: it owns the run dir
        from fashion_tagger.evaluation.curves import draw_curves

        draw_curves(run.path)
        _print_run(run, as_json)


def _fit_budget(config: TrainConfig, dataset_dir: str, quiet: bool) -> TrainConfig:
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.training.budget import fit_to_budget

    counts = Dataset.open(dataset_dir).labelled().split_counts()
    planned = fit_to_budget(config, counts.get("train", 0), counts.get("val", 0))
    if planned is not config and not quiet:
        share = f" of {planned.train_fraction:.0%} of the train batches" * (
            planned.train_fraction < 1
        )
        console.print(f"--max-time {config.max_time}: {planned.epochs} epochs{share} fit")
    return planned


def _print_run(run, as_json: bool) -> None:
    """What `train` prints: the run dir, the time taken and the best validation accuracies."""
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
    before, after = (summary["metrics"].get(f"val_ece_{k}") for k in ("before", "after"))
    if before is not None and after is not None:
        temps = " / ".join(f"{t:.2f}" for t in run.spec.temperatures)
        console.print(
            f"  confidence ECE on val: {before:.3f} -> {after:.3f} (temperatures {temps})"
        )


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
    engine: str = typer.Option(
        "local", "--engine", help="local (one process) or ray (a Ray cluster; --out is a folder)."
    ),
    address: str = typer.Option(None, "--address", help="ray: the cluster (default: a local one)."),
    concurrency: int | None = typer.Option(
        None,
        "--concurrency",
        min=1,
        help="ray: model actors (default: one per CPU of the cluster, or per --num-gpus GPUs).",
    ),
    num_gpus: float = typer.Option(0.0, "--num-gpus", min=0.0, help="ray: GPUs per model actor."),
    partition_size: int = typer.Option(
        1000, "--partition-size", min=1, help="ray: images per output partition (resume unit)."
    ),
    progress: bool = PROGRESS,
    as_json: bool = typer.Option(False, "--json", help="ray: print the job summary as JSON."),
) -> None:
    """Tag images with a trained model: one row per image (path with scores, top-k, attributes).

    Example: fashion-tagger predict runs/p1 photos/ 'more/*.jpg' --out preds.parquet

    On Ray (resumable by partition): fashion-tagger predict runs/p1 s3://bucket/photos/ --engine ray --out preds/
    """
    if engine not in ("local", "ray"):
        raise FashionTaggerError(f"--engine {engine!r}: choose local or ray")
    if engine == "ray":
        _predict_ray(run_dir, paths, out, batch_size, top_k, backend, address, concurrency,
                     num_gpus, partition_size, progress, as_json)  # fmt: skip
        return
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


def _predict_ray(
    run_dir, paths, out, batch_size, top_k, backend, address, concurrency, num_gpus,
    partition_size, progress, as_json,
) -> None:  # fmt: skip
    """`predict --engine ray`: partitioned Parquet in the folder --out."""
    from fashion_tagger.inference.ray_predict import predict_ray

    if out is None:
        raise FashionTaggerError("--engine ray writes partitioned Parquet: give --out FOLDER")
    summary = predict_ray(
        run_dir, paths, out, address=address,
        concurrency=concurrency, num_gpus=num_gpus, batch_size=max(batch_size, 1),
        backend=backend, top_k=top_k, partition_size=partition_size, progress=progress,
    )  # fmt: skip
    if as_json:
        print_json(summary)
        return
    console.print(
        f"{summary['images']:,} images ({summary['errors']} unreadable) -> {out} "
        f"(ray, {summary['backend']}: {len(summary['written'])} partitions written, "
        f"{len(summary['skipped'])} already there)"
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
    how = "heads trained on the frozen features of" if s["frozen_backbone"] else "fine-tuned from"
    origin = (
        f"{how} pretrained weights {s['weights']} (sha256 {s['weights_sha256'][:12]})"
        if s["weights"]
        else "trained from scratch"
    )
    console.print(f"{s['backbone']}: {origin}", highlight=False, soft_wrap=True)
    console.print(
        f"[bold green]done[/] ({s['kind']}, {s['epochs']} epochs, {s['train_seconds']} s of training)"
    )
    for level, acc in s["accuracy"].items():
        console.print(f"  {s['split']} accuracy {level}: {100 * acc:.1f} %")
    for key in ("dataset_dir", "run_dir", "metrics", "report", "predictions"):
        console.print(f"  {key.replace('_', ' ')}: {s[key]}")
