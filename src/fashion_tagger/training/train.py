"""`train(dataset_dir, run_dir, config) -> RunDir`: the training stage, on Lightning.

A run is four named steps. `_prepare`: the config (new, or saved when resuming), the spec, each
split decoded once into memory (cached as .npz). `_build`: the model of the spec, its backbone
weights, the LightningModule (`--freeze-backbone`: on backbone features computed once).
`_fit`: the Trainer with checkpoints (best on validation leaf accuracy, last at epoch ends and
every N steps so a killed run resumes near where it stopped), TensorBoard and `logs/metrics.csv`,
the LR finder. `_finalise`: the best checkpoint's weights (or an error, never silently other
weights) written as the run dir contract (`model.safetensors` + `model.json`).
Curves are drawn from metrics.csv by the report side (`evaluation.curves`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from fashion_tagger import _progress
from fashion_tagger._io import atomic_path, write_json_atomic
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import RunDirError
from fashion_tagger.model import calibration
from fashion_tagger.model.backbones import backbone_data_config
from fashion_tagger.model.load import FashionModel, build_model
from fashion_tagger.model.preprocess import normalize_tensor
from fashion_tagger.model.rundir import RunDir, RunPaths, save_model
from fashion_tagger.model.spec import INTERPOLATIONS, ModelSpec
from fashion_tagger.model.weights import LoadedWeights, load_backbone_weights, resolve_weights
from fashion_tagger.training import data as tdata
from fashion_tagger.training.callbacks import ClockSchedule, EpochLog, StepTimer
from fashion_tagger.training.config import ConfigError, TrainConfig, parse_max_time
from fashion_tagger.training.module import TaggerModule


def resolve_spec(
    ds: Dataset, config: TrainConfig, weights: LoadedWeights | None = None
) -> ModelSpec:
    """The model's input/taxonomy/attribute spec from the dataset and the config; the
    normalisation and resampling filter are the ones the pretrained weights were trained with,
    when they say."""
    m, d = config.model, config.data
    defaults = backbone_data_config(m.backbone, d.channels)
    if weights is not None and weights.mean and weights.std and d.channels == 3:
        defaults = {**defaults, "mean": tuple(weights.mean), "std": tuple(weights.std)}
    interpolation = weights.interpolation if weights is not None else None
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
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
    )


# -- helpers ----------------------------------------------------------------------------------
def _load_saved(paths: RunPaths) -> tuple[Path, TrainConfig]:
    """The dataset dir and config a run saved when it started (what `--resume` continues)."""
    path = paths.train_config
    if not path.is_file():
        raise RunDirError(
            f"cannot resume {paths.path}: {path.name} is missing (it is written when training "
            "starts); start a new run instead"
        )
    try:
        saved = json.loads(path.read_text())
        return Path(saved["dataset_dir"]), TrainConfig.from_dict(saved["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RunDirError(f"cannot resume {paths.path}: {path} is malformed ({exc})") from exc


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
    model.backbone.eval()
    out = []
    with (
        _progress.bar(f"backbone features ({label})", total=len(arrays), enabled=progress) as bar,
        torch.inference_mode(),
    ):
        for i in range(0, len(arrays), batch):
            x = normalize_tensor(torch.from_numpy(arrays.images[i : i + batch]), spec)
            out.append(model.backbone(x).float().numpy())
            bar.advance(len(x))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _cached_features(
    model: FashionModel,
    arrays: tdata.SplitArrays,
    spec: ModelSpec,
    config: TrainConfig,
    cache_dir: Path,
    split: str,
    key: str,
) -> np.ndarray:
    path = cache_dir / f"features-{split}-{key}.npy"
    if path.is_file():
        return np.load(path)
    feats = _features(model, arrays, spec, max(64, config.batch_size), config.progress, split)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, feats)
    return feats


def _find_lr(
    trainer: pl.Trainer, module: TaggerModule, train_loader, val_loader, plot: Path
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
        fig.savefig(plot, dpi=80)
    lr = float(suggestion) if suggestion else 1e-3
    module.lr = lr
    return lr


def launch_rank() -> int:
    """This process's rank as its launcher set it (torchrun, SLURM, or Lightning's NODE_RANK
    and LOCAL_RANK), known before the Trainer exists; 0 for a single process. Only whether it
    is 0 matters: rank 0 alone writes the run dir and the decoded-image cache."""
    env = os.environ
    for var in ("RANK", "SLURM_PROCID"):
        if env.get(var, "").isdigit():
            return int(env[var])
    return int(env.get("NODE_RANK") or 0) + int(env.get("LOCAL_RANK") or 0)


class _NoTips(logging.Filter):
    """Drops Lightning's advertisements ("Tip: ... litlogger") and its set-up chatter (which
    accelerators exist, how it counts the batches, that the planned epochs ran): none is about
    the run, and `train` reports the run itself."""

    CHATTER = (
        "Tip:",
        "GPU available:",
        "TPU available:",
        "HPU available:",
        "Loading `train_dataloader` to estimate",
        "`Trainer.fit` stopped: `max_epochs=",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in self.CHATTER)


def _quiet_lightning() -> None:
    """Keep Lightning's noise off the user's terminal: its product tips and a deprecation
    warning raised inside Lightning itself (`LeafSpec`), which no user of ours can act on."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in log.filters):
        log.addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
    # a frozen backbone is in eval mode on purpose (its batch-norm statistics stay ImageNet's)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start")


# -- the stage --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """What `_prepare` hands on: the resolved config and spec, and the splits in memory."""

    dataset_dir: Path
    ds: Dataset
    paths: RunPaths
    config: TrainConfig
    spec: ModelSpec
    resume: bool
    cache_dir: Path
    train: tdata.SplitArrays
    val: tdata.SplitArrays
    unreadable: int
    weights: LoadedWeights | None


@dataclass(frozen=True)
class Fitted:
    """What `_fit` hands on: the trainer after fitting, its best checkpoint and timings."""

    trainer: pl.Trainer
    best_ckpt: str
    timer: StepTimer
    seconds: float


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
    _quiet_lightning()
    prep = _prepare(dataset_dir, RunPaths(Path(run_dir)), config, resume)
    module, train_in, val_in = _build(prep)
    fitted = _fit(prep, module, train_in, val_in, callbacks)
    if not fitted.trainer.is_global_zero:
        return RunDir(prep.paths.path, {}, prep.spec)
    return _finalise(prep, module, fitted, val_in)


def _resolve_config(
    dataset_dir: str | Path | None, paths: RunPaths, config: TrainConfig | None, resume: bool
) -> tuple[Path, TrainConfig]:
    """The dataset dir and config of a new run, or those saved by the run to resume."""
    if resume:
        saved_ds, saved = _load_saved(paths)
        if not paths.last_ckpt.is_file():
            raise RunDirError(
                f"cannot resume {paths.path}: {paths.last_ckpt} is missing; start a new run"
            )
        return Path(dataset_dir or saved_ds), saved
    if dataset_dir is None:
        raise RunDirError("train needs a dataset dir (or --resume RUN_DIR)")
    if paths.last_ckpt.is_file() or paths.model_json.is_file():
        raise RunDirError(
            f"{paths.path} already holds a run; continue it with `fashion-tagger train --resume "
            f"{paths.path}` or choose another --out"
        )
    return Path(dataset_dir), config or TrainConfig()


def _prepare(
    dataset_dir: str | Path | None, paths: RunPaths, config: TrainConfig | None, resume: bool
) -> Prepared:
    """Step 1: config, spec, the saved train config, and both splits decoded into memory."""
    dataset_dir, config = _resolve_config(dataset_dir, paths, config, resume)
    config = config.with_recipe()
    pl.seed_everything(config.seed, workers=True, verbose=False)
    ds = Dataset.open(dataset_dir)
    m = config.model
    source = m.weights or ("timm" if m.pretrained else None)
    weights = resolve_weights(source, m.backbone) if source else None
    spec = resolve_spec(ds, config, weights)
    # the saved config is the resolved one: the backbone's default size written out
    config = replace(config, data=replace(config.data, image_size=spec.input_size))
    rank_zero = launch_rank() == 0  # only rank 0 writes the run dir and the cache
    if rank_zero:
        paths.path.mkdir(parents=True, exist_ok=True)
    if rank_zero and not resume:
        location = ds.location or str(dataset_dir.resolve())
        write_json_atomic(paths.train_config, {"dataset_dir": location, "config": config.to_dict()})
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else paths.cache
    split_args = dict(
        spec=spec,
        cache_dir=cache_dir,
        workers=config.data.workers,
        progress=config.progress,
        write_cache=rank_zero,
    )
    train_arr, bad_train = tdata.load_split(ds, config.data.train_split, **split_args)
    val_arr, bad_val = tdata.load_split(ds, config.data.val_split, **split_args)
    return Prepared(
        dataset_dir, ds, paths, config, spec, resume, cache_dir, train_arr, val_arr,
        bad_train + bad_val, weights,
    )  # fmt: skip


def _build(prep: Prepared) -> tuple[TaggerModule, np.ndarray, np.ndarray]:
    """Step 2: the model with its backbone weights, and the module's inputs (pixels, or
    backbone features computed once for `--freeze-backbone`)."""
    config, spec, m = prep.config, prep.spec, prep.config.model
    _check_batch_norm(prep)
    weights = tdata.class_weights(prep.train.levels, spec.taxonomy.sizes, config.data.class_weights)
    model = build_model(spec)
    if prep.weights is not None:
        load_backbone_weights(model.backbone, prep.weights)
    if m.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not m.freeze_backbone:
        module = TaggerModule(model, spec, config, weights)
        return module, prep.train.images, prep.val.images
    sha = prep.weights.sha256 if prep.weights else None
    key = hashlib.sha256(
        json.dumps([m.backbone, sha, list(spec.input_size), _fingerprint(prep.ds)]).encode()
    ).hexdigest()[:16]
    feats = [
        _cached_features(model, arrays, spec, config, prep.cache_dir, split, key)
        for split, arrays in (("train", prep.train), ("val", prep.val))
    ]
    module = TaggerModule(model, spec, config, weights, features_input=True)
    return module, feats[0], feats[1]


def _check_batch_norm(prep: Prepared) -> None:
    """Batch-norm cannot train on one image a step: say so instead of failing inside torch."""
    m = prep.config.model
    if min(prep.config.batch_size, len(prep.train)) >= 2 or m.freeze_backbone or m.freeze_bn:
        return
    raise ConfigError(
        f"each training step would see 1 image (--batch-size {prep.config.batch_size}, "
        f"{len(prep.train)} train images), and the backbone's batch-norm layers need 2 or more: "
        "use --batch-size 2 or more on at least 2 train images, or --freeze-bn"
    )


def _callbacks(prep: Prepared) -> tuple[list[pl.Callback], pl.Callback, StepTimer]:
    """Checkpoints (best, last, every N steps), the metrics log, the timer, the clock."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    config, ckpt_dir = prep.config, prep.paths.checkpoints
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=prep.paths.best_ckpt.stem,
        monitor="val_acc_leaf",
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    timer = StepTimer()
    cbs: list[pl.Callback] = [best, EpochLog(prep.paths.metrics_csv, prep.spec.level_names), timer]
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
    if config.schedule != "constant":
        cbs.append(LearningRateMonitor(logging_interval="epoch"))
        if max_time:
            cbs.append(ClockSchedule(timedelta(**max_time).total_seconds()))
    return cbs, best, timer


def _trainer(prep: Prepared, callbacks: list[pl.Callback]) -> pl.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    config, paths = prep.config, prep.paths
    max_time = parse_max_time(config.max_time)
    clocked = bool(max_time) and config.schedule != "constant"
    return pl.Trainer(
        default_root_dir=paths.path,
        accelerator=config.accelerator,
        strategy=config.strategy,
        devices=config.devices,
        num_nodes=config.num_nodes,
        precision=config.precision,
        max_epochs=config.epochs,
        # a clocked run stops itself; Lightning's stop is the backstop, should a step or the
        # last validation overrun
        max_time={**max_time, "seconds": max_time["seconds"] + 60} if clocked else max_time,
        callbacks=callbacks,
        logger=TensorBoardLogger(
            str(paths.path),
            name=paths.tensorboard.parent.name,
            version=paths.tensorboard.name,
            default_hp_metric=False,
        ),
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )


def _learning_rate(prep: Prepared, trainer, module: TaggerModule, loaders) -> None:
    """`--lr auto`: run the LR finder once and save its answer, so a resume reuses it."""
    if prep.config.lr != "auto":
        return
    saved = json.loads(prep.paths.train_config.read_text())
    if prep.resume:
        module.lr = float(saved.get("lr_found") or module.lr)
        return
    lr_found = _find_lr(trainer, module, *loaders, prep.paths.lr_find)
    write_json_atomic(prep.paths.train_config, {**saved, "lr_found": lr_found})


def _fit(
    prep: Prepared,
    module: TaggerModule,
    train_in: np.ndarray,
    val_in: np.ndarray,
    extra_callbacks: Sequence[pl.Callback],
) -> Fitted:
    """Step 3: the Trainer, the loaders, the learning rate, and the fit itself."""
    config = prep.config
    cbs, best, timer = _callbacks(prep)
    trainer = _trainer(prep, [*cbs, *extra_callbacks])
    distributed = trainer.world_size > 1
    loaders = [
        tdata.make_loader(
            tdata.BatchDataset(x, arrays.levels, arrays.attributes),
            batch_size,
            shuffle=shuffle,
            seed=config.seed,
            distributed=distributed,
        )
        for x, arrays, batch_size, shuffle in (
            (train_in, prep.train, config.batch_size, True),
            (val_in, prep.val, max(config.batch_size, 128), False),
        )
    ]
    if config.train_fraction < 1:  # as a batch count, at least one, so tiny loaders work too
        trainer.limit_train_batches = max(1, round(config.train_fraction * len(loaders[0])))
    _learning_rate(prep, trainer, module, loaders)
    started = time.perf_counter()
    ckpt = str(prep.paths.last_ckpt) if prep.resume else None
    trainer.fit(module, *loaders, ckpt_path=ckpt)
    return Fitted(trainer, best.best_model_path, timer, time.perf_counter() - started)


def _load_best(module: TaggerModule, best_ckpt: str) -> None:
    """Load the best checkpoint's weights into `module`: model.json's metrics describe them,
    so failing to load them is an error, not a silent fall back to the last weights."""
    if not best_ckpt or not Path(best_ckpt).is_file():
        return  # no validation ever ran: the last weights are the only ones
    try:
        state = torch.load(best_ckpt, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise RunDirError(
            f"cannot load the best checkpoint {best_ckpt} ({type(exc).__name__}: "
            f"{str(exc)[:200]}); its metrics would describe other weights than those saved. "
            "Resume the run with `fashion-tagger train --resume`, or start it again"
        ) from exc


def _val_probabilities(
    module: TaggerModule, val_in: np.ndarray, batch_size: int
) -> list[np.ndarray]:
    """The best weights' softmax per level on the val inputs (pixels or cached features), as
    validation computes them: what the temperatures are fitted to."""
    device = next(module.parameters()).device
    module.eval()
    parts: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for start in range(0, len(val_in), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(val_in[start : start + batch_size]))
            out = module(module._inputs(x.to(device), train=False))
            parts.append([torch.softmax(z.float(), dim=1).cpu().numpy() for z in out[:-1]])
    return [np.concatenate(level) for level in zip(*parts, strict=True)]


def _fit_temperatures(
    prep: Prepared, module: TaggerModule, val_in: np.ndarray
) -> tuple[ModelSpec, dict[str, Any]]:
    """Per-level temperatures fitted on the val split (`model.calibration`), so that the run
    dir's confidences are probabilities from the start; T stays 1.0 where val is too small
    (under `calibration.MIN_FIT_ROWS` rows), and the record says so."""
    taxonomy, split = prep.spec.taxonomy, prep.config.data.val_split
    context = {
        "split": split,
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }
    if not len(prep.val):
        fit = calibration.kept(taxonomy, f"no {split} rows: temperatures kept at 1.0")
    else:  # a level with under MIN_FIT_ROWS rows keeps T = 1 (the fit says so in its note)
        probs = _val_probabilities(module, val_in, max(prep.config.batch_size, 128))
        fit = calibration.fit_temperatures(taxonomy, probs, prep.val.levels)
    spec = replace(prep.spec, temperatures=tuple(fit.temperatures))
    return spec, fit.to_json(**context)


def _finalise(prep: Prepared, module: TaggerModule, fitted: Fitted, val_in: np.ndarray) -> RunDir:
    """Step 4: the best weights, their temperatures fitted on val, and model.json (config,
    data, metrics) as the run dir."""
    config, trainer = prep.config, fitted.trainer
    _load_best(module, fitted.best_ckpt)
    rows = prep.paths.read_metrics()
    best_row = max(rows, key=lambda r: r.get("val_acc_leaf", -1.0)) if rows else {}
    spec, temperature_fit = _fit_temperatures(prep, module, val_in)
    ece = temperature_fit["ece_path"]
    extra: dict[str, Any] = {
        "training": {
            **config.to_dict(),
            "lr_used": module.lr,
            "epochs_run": trainer.current_epoch,
            "global_step": trainer.global_step,
            "seconds": round(fitted.seconds, 1),
            "throughput": fitted.timer.summary(),
        },
        "data": {
            "dataset": prep.ds.location or str(prep.dataset_dir),
            "fingerprint": _fingerprint(prep.ds),
            "counts": {
                "train": len(prep.train),
                "val": len(prep.val),
                "unreadable_dropped": prep.unreadable,
            },
        },
        "metrics": {**best_row, "val_ece_before": ece["before"], "val_ece_after": ece["after"]},
        "temperature_fit": temperature_fit,
        "weights": prep.weights.describe() if prep.weights else None,
    }
    model = module.model.cpu().to(memory_format=torch.contiguous_format)
    run = save_model(prep.paths.path, model, spec, extra)
    if not config.data.cache_dir:  # the default cache only serves a resume; the run is done
        shutil.rmtree(prep.cache_dir, ignore_errors=True)
    return run
