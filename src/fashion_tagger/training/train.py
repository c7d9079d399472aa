"""`train(dataset_dir, run_dir, config) -> RunDir`: the training stage, on Lightning.

Decodes each split once into memory (cached as .npz), builds the model of the config, trains it
with checkpoints (best on validation leaf accuracy, last at epoch ends and every N steps so a
killed run resumes near where it stopped), logs to TensorBoard and `logs/metrics.csv`, draws
`curves.png`, and writes the run dir contract (`model.safetensors` + `model.json`).
`--freeze-backbone` computes backbone features once and trains only the heads on them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from fashion_tagger import _progress
from fashion_tagger._io import write_json_atomic
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import RunDirError
from fashion_tagger.model.backbones import backbone_data_config
from fashion_tagger.model.load import FashionModel, build_model, load_backbone_weights
from fashion_tagger.model.rundir import RunDir, RunPaths, save_model
from fashion_tagger.model.spec import ModelSpec
from fashion_tagger.training import data as tdata
from fashion_tagger.training.config import TrainConfig, parse_max_time
from fashion_tagger.training.module import TaggerModule

TRAIN_CONFIG = "train_config.json"
METRICS_CSV = "metrics.csv"


def resolve_spec(ds: Dataset, config: TrainConfig) -> ModelSpec:
    """The model's input/taxonomy/attribute spec from the dataset and the config."""
    m, d = config.model, config.data
    defaults = backbone_data_config(m.backbone, d.channels)
    return ModelSpec(
        model_id="",
        backbone={
            "name": m.backbone,
            "pretrained": m.pretrained or bool(m.weights),
            "in_chans": d.channels,
        },
        head=m.head_spec(),
        input_size=tuple(d.image_size or defaults["size"]),  # type: ignore[arg-type]
        channels=d.channels,
        mean=defaults["mean"],
        std=defaults["std"],
        resize=d.resize,
        taxonomy=ds.taxonomy,
        attribute_names=ds.attribute_names,
    )


# -- callbacks --------------------------------------------------------------------------------
class EpochLog(pl.Callback):
    """Appends one row per epoch to logs/metrics.csv and redraws curves.png."""

    def __init__(self, run_dir: Path, level_names: Sequence[str]) -> None:
        self.run_dir = run_dir
        self.columns = (
            ["epoch", "step", "train_loss", "val_loss"]
            + [f"val_acc_{n}" for n in level_names]
            + ["val_acc_leaf"]
        )

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            draw_curves(RunPaths(self.run_dir).metrics_csv, RunPaths(self.run_dir).curves)

    def on_exception(
        self, trainer: pl.Trainer, module: pl.LightningModule, exc: BaseException
    ) -> None:
        self.on_train_end(trainer, module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for c in self.columns[2:]:
            key = "train_loss_epoch" if c == "train_loss" else c
            row[c] = float(m[key]) if key in m else ""
        path = RunPaths(self.run_dir).metrics_csv
        new = not path.is_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            if new:
                w.writeheader()
            w.writerow(row)


class StepTimer(pl.Callback):
    """Measures where training time goes: waiting for data vs running the step."""

    def __init__(self) -> None:
        self.data_s = self.step_s = self.cpu_s = 0.0
        self.images = 0
        self._cpu_start = 0.0
        self._t_end: float | None = None
        self._t_start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._t_end = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._t_start = time.perf_counter()
        self._cpu_start = time.process_time()
        if self._t_end is not None:
            self.data_s += self._t_start - self._t_end

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._t_end = time.perf_counter()
        self.step_s += self._t_end - self._t_start
        self.cpu_s += time.process_time() - self._cpu_start
        self.images += len(batch[0])

    def summary(self) -> dict[str, float]:
        total = self.data_s + self.step_s
        return {
            "images": self.images,
            "images_per_s": round(self.images / total, 1) if total else 0.0,
            "data_fraction": round(self.data_s / total, 4) if total else 0.0,
            "train_seconds": round(total, 1),
            # CPU time of the steps (all threads): images per CPU-second does not depend on
            # how busy a shared machine was
            "images_per_cpu_s": round(self.images / self.cpu_s, 1) if self.cpu_s else 0.0,
        }


class ClockSchedule(pl.Callback):
    """Makes a time budget end with a finished learning-rate schedule.

    The schedule is planned in steps, but a machine can run slower than planned (a shared or
    throttled CPU), and a run cut by the clock at a high learning rate is a poor model. With
    this callback the schedule follows whichever is further on, the share of steps done or the
    share of the budget spent: after each step the scheduler is stepped on to the clock's
    position when it lags behind. When the budget is spent, less the time of one validation,
    training stops (Lightning then runs that last validation), so the run ends on time with its
    learning rate annealed. Its state is checkpointed, so `--resume` keeps the clock.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.elapsed = 0.0  # seconds of training before this process (a resumed run)
        self.val_seconds = 0.0
        self._start = 0.0
        self._val_start = 0.0

    def spent(self) -> float:
        return self.elapsed + time.perf_counter() - self._start

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_seconds = time.perf_counter() - self._val_start

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        budget = max(self.seconds - self.val_seconds, 1e-6)
        share = float(trainer.strategy.broadcast(self.spent() / budget))
        total = int(trainer.estimated_stepping_batches)
        finished = share >= 1
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            if config.interval != "step":
                continue
            while sched.last_epoch < min(int(share * total), total):
                sched.step()
            # pushed on by the clock, the schedule can reach its end before the clock does;
            # Lightning's next step would then overrun it (OneCycleLR raises)
            finished = finished or sched.last_epoch >= total
        if finished:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, float]:
        return {"elapsed": self.spent() if self._start else self.elapsed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed = float(state_dict.get("elapsed", 0.0))


def read_metrics(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [
            {k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)
        ]


def draw_curves(metrics_csv: Path, out: Path) -> None:
    """Loss and per-level validation accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    if not rows:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [r["epoch"] + 1 for r in rows]
    for key in ("train_loss", "val_loss"):
        a.plot(ep, [r.get(key, math.nan) for r in rows], marker="o", label=key)
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    for key in rows[-1]:
        if key.startswith("val_acc_"):
            b.plot(ep, [r.get(key, math.nan) for r in rows], marker="o", label=key[8:])
    b.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy", ylim=(0, 1))
    b.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


# -- helpers ----------------------------------------------------------------------------------
def _fingerprint(ds: Dataset) -> str:
    h = hashlib.sha256()
    for sha, split in zip(
        ds.table.column("sha256").to_pylist(), ds.table.column("split").to_pylist(), strict=True
    ):
        h.update(f"{sha}:{split}\n".encode())
    return h.hexdigest()[:16]


def _features(
    model: FashionModel,
    arrays: tdata.SplitArrays,
    spec: ModelSpec,
    batch: int,
    progress: bool,
    label: str,
) -> np.ndarray:
    """Backbone features of every image (eval mode, no augmentation) for head-only training."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    model.backbone.eval()
    out = []
    with (
        _progress.bar(f"backbone features ({label})", total=len(arrays), enabled=progress) as bar,
        torch.inference_mode(),
    ):
        for i in range(0, len(arrays), batch):
            x = torch.from_numpy(arrays.images[i : i + batch]).float() / 255.0
            out.append(model.backbone((x - mean) / std).float().numpy())
            bar.advance(len(x))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _cached_features(
    model, arrays, spec, config, cache_dir: Path, split: str, key: str
) -> np.ndarray:
    path = cache_dir / f"features-{split}-{key}.npy"
    if path.is_file():
        return np.load(path)
    feats = _features(model, arrays, spec, max(64, config.batch_size), config.progress, split)
    cache_dir.mkdir(parents=True, exist_ok=True)
    from fashion_tagger._io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, feats)
    return feats


def _load_saved(run_dir: Path) -> tuple[Path, TrainConfig]:
    path = run_dir / TRAIN_CONFIG
    if not path.is_file():
        raise RunDirError(
            f"cannot resume {run_dir}: {TRAIN_CONFIG} is missing (it is written when training "
            "starts); start a new run instead"
        )
    try:
        saved = json.loads(path.read_text())
        return Path(saved["dataset_dir"]), TrainConfig.from_dict(saved["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RunDirError(f"cannot resume {run_dir}: {path} is malformed ({exc})") from exc


# -- the stage --------------------------------------------------------------------------------
def train(
    dataset_dir: str | Path | None,
    run_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    callbacks: Sequence[pl.Callback] = (),
) -> RunDir:
    """Train a model on a dataset dir's train split (validating on val) into `run_dir`.

    With `resume=True`, continue `run_dir` from `checkpoints/last.ckpt` with the config and
    dataset saved when it started (`dataset_dir` and `config` may then be None).

    Example:
        >>> run = train("data/products", "runs/p1", TrainConfig(epochs=5))
        >>> run.config["metrics"]["val_acc_leaf"]
    """
    run_dir = Path(run_dir)
    last = RunPaths(run_dir).last_ckpt
    if resume:
        saved_ds, config = _load_saved(run_dir)
        dataset_dir = dataset_dir or saved_ds
        if not last.is_file():
            raise RunDirError(f"cannot resume {run_dir}: {last} is missing; start a new run")
    else:
        if dataset_dir is None:
            raise RunDirError("train needs a dataset dir (or --resume RUN_DIR)")
        config = config or TrainConfig()
        if last.is_file() or (run_dir / "model.json").is_file():
            raise RunDirError(
                f"{run_dir} already holds a run; continue it with `fashion-tagger train --resume "
                f"{run_dir}` or choose another --out"
            )
    assert config is not None
    dataset_dir = Path(dataset_dir)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    ds = Dataset.open(dataset_dir)
    spec = resolve_spec(ds, config)
    # the saved config is the resolved one: the backbone's default size written out
    config = replace(config, data=replace(config.data, image_size=spec.input_size))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_json_atomic(
            run_dir / TRAIN_CONFIG,
            {"dataset_dir": str(dataset_dir.resolve()), "config": config.to_dict()},
        )
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else run_dir / "cache"

    split_args = dict(
        spec=spec, cache_dir=cache_dir, workers=config.data.workers, progress=config.progress
    )
    train_arr, bad_train = tdata.load_split(ds, config.data.train_split, **split_args)
    val_arr, bad_val = tdata.load_split(ds, config.data.val_split, **split_args)
    weights = tdata.class_weights(train_arr.levels, spec.taxonomy.sizes, config.data.class_weights)

    m = config.model
    model = build_model(spec, pretrained=m.pretrained)
    if m.weights:
        load_backbone_weights(model.backbone, m.weights)
    features = m.freeze_backbone
    if features:
        key = hashlib.sha256(
            json.dumps(
                [m.backbone, m.pretrained, m.weights, list(spec.input_size), _fingerprint(ds)]
            ).encode()
        ).hexdigest()[:16]
        train_in = _cached_features(model, train_arr, spec, config, cache_dir, "train", key)
        val_in = _cached_features(model, val_arr, spec, config, cache_dir, "val", key)
    else:
        train_in, val_in = train_arr.images, val_arr.images
    module = TaggerModule(model, spec, config, weights, features_input=features)

    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    ckpt_dir = RunPaths(run_dir).checkpoints
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val_acc_leaf",
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    cbs: list[pl.Callback] = [best_cb, EpochLog(run_dir, spec.level_names), timer := StepTimer()]
    if config.checkpoint_every:
        cbs.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                every_n_train_steps=config.checkpoint_every,
                save_top_k=0,
                save_last=True,
                enable_version_counter=False,
            )
        )
    max_time = parse_max_time(config.max_time)
    clocked = bool(max_time) and config.schedule != "constant"
    if config.schedule != "constant":
        cbs.append(LearningRateMonitor(logging_interval="epoch"))
    if clocked:
        cbs.append(ClockSchedule(timedelta(**max_time).total_seconds()))
    cbs.extend(callbacks)
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        accelerator="auto",
        devices=config.devices,
        num_nodes=config.num_nodes,
        precision=config.precision,
        max_epochs=config.epochs,
        # a clocked run stops itself; Lightning's stop is the backstop, should a step or the
        # last validation overrun
        max_time={**max_time, "seconds": max_time["seconds"] + 60} if clocked else max_time,
        callbacks=cbs,
        logger=TensorBoardLogger(
            str(run_dir), name="logs", version="tensorboard", default_hp_metric=False
        ),
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )
    distributed = trainer.world_size > 1
    train_loader = tdata.make_loader(
        tdata.BatchDataset(train_in, train_arr.levels, train_arr.attributes),
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        distributed=distributed,
    )
    val_loader = tdata.make_loader(
        tdata.BatchDataset(val_in, val_arr.levels, val_arr.attributes),
        max(config.batch_size, 128),
        shuffle=False,
        seed=config.seed,
        distributed=distributed,
    )
    if config.train_fraction < 1:  # as a batch count, at least one, so tiny loaders work too
        n = max(1, round(config.train_fraction * len(train_loader)))
        trainer.limit_train_batches = n
    lr_found = None
    if config.lr == "auto" and not resume:
        lr_found = _find_lr(trainer, module, train_loader, val_loader, run_dir)
    elif config.lr == "auto":
        lr_found = json.loads((run_dir / TRAIN_CONFIG).read_text()).get("lr_found")
        module.lr = float(lr_found or module.lr)
    if lr_found is not None and not resume:
        saved = json.loads((run_dir / TRAIN_CONFIG).read_text())
        write_json_atomic(run_dir / TRAIN_CONFIG, {**saved, "lr_found": lr_found})
    started = time.perf_counter()
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume else None)
    elapsed = time.perf_counter() - started
    if not trainer.is_global_zero:
        return RunDir(run_dir, {}, spec)

    best = best_cb.best_model_path
    if best and Path(best).is_file():
        try:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        except Exception:  # fall back to the last weights if Lightning's format changes
            pass
    rows = read_metrics(RunPaths(run_dir).metrics_csv)
    best_row = max(rows, key=lambda r: r.get("val_acc_leaf", -1.0)) if rows else {}
    extra: dict[str, Any] = {
        "training": {
            **config.to_dict(),
            "lr_used": module.lr,
            "epochs_run": trainer.current_epoch,
            "global_step": trainer.global_step,
            "seconds": round(elapsed, 1),
            "throughput": timer.summary(),
        },
        "data": {
            "dataset": str(dataset_dir),
            "fingerprint": _fingerprint(ds),
            "counts": {
                "train": len(train_arr),
                "val": len(val_arr),
                "unreadable_dropped": bad_train + bad_val,
            },
        },
        "metrics": {k: v for k, v in best_row.items()},
    }
    run = save_model(run_dir, module.model.cpu(), spec, extra)
    if not config.data.cache_dir:  # the default cache only serves a resume; the run is done
        import shutil

        shutil.rmtree(cache_dir, ignore_errors=True)
    return run


def _find_lr(
    trainer: pl.Trainer, module: TaggerModule, train_loader, val_loader, run_dir: Path
) -> float:
    """Lightning's LR range test; saves lr_find.png and sets the module's lr to the suggestion."""
    from lightning.pytorch.tuner import Tuner

    steps = max(10, min(100, len(train_loader)))
    finder = Tuner(trainer).lr_find(
        module,
        train_dataloaders=train_loader,
        val_dataloaders=val_loader,
        num_training=steps,
        attr_name="lr",
    )
    suggestion = finder.suggestion() if finder is not None else None
    if finder is not None:
        import matplotlib

        matplotlib.use("Agg")
        fig = finder.plot(suggest=True)
        fig.savefig(run_dir / "lr_find.png", dpi=80)
    lr = float(suggestion) if suggestion else 1e-3
    module.lr = lr
    return lr


def plan_budget(
    config: TrainConfig, n_train: int, minutes: float, n_val: int | None = None, steps: int = 4
) -> tuple[int, float]:
    """(epochs, train_fraction) that fit in `minutes` on this machine, from a few timed steps.

    A time budget should end with a finished schedule (OneCycle/cosine reach their low learning
    rate), so budgeted runs size themselves up front; when not even one epoch fits, each epoch
    sees a fraction of the train batches. Give the run `max_time=minutes` as well: the plan
    comes from a few steps, and `ClockSchedule` makes up the difference when the machine turns
    out slower than they were. It plans 15 % more than those steps say fits: a plan that is too
    long is trimmed by the clock, one that is too short ends early and wastes the budget, and a
    run's first steps are often faster than its average (160 against 142 images/s measured).
    """
    from fashion_tagger.model.backbones import create_backbone

    d = config.data
    size = d.image_size or backbone_data_config(config.model.backbone, d.channels)["size"]
    net, width = create_backbone(config.model.backbone, d.channels)
    head = torch.nn.Linear(width, 100)
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()])
    x = torch.randn(config.batch_size, d.channels, *size)
    y = torch.randint(0, 100, (config.batch_size,))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(head(net(x)), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    per_image = min(times[1:] or times) / config.batch_size
    budget = minutes * 60 * 1.15
    train_s = max(n_train, 1) * per_image
    # validation runs on the whole val split every epoch: forward only, about a third of a step
    val_s = (n_train // 5 if n_val is None else n_val) * per_image / 3
    epochs = max(1, round(budget / (train_s + val_s)))
    fraction = (budget / epochs - val_s) / train_s
    return epochs, max(0.02, min(1.0, round(fraction, 3)))
