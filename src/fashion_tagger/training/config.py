"""Training configuration: one frozen dataclass per concern, validated on creation.

The resolved config is serialised from these objects into the run dir (`model.json["training"]`
and `train_config.json`, which `--resume` reads back), never re-parsed from argv. Every error
names the command-line flag to change.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.model.spec import (
    DEFAULT_HEAD,
    RESIZE_MODES,
    SIMPLE_CNN,
    HeadSpec,
    ModelError,
    head_kinds,
    head_option_names,
    head_spec,
)

SCHEDULES = ("onecycle", "cosine", "constant")
CLASS_WEIGHTS = ("inverse", "sqrt", "none")
AUGMENT = ("none", "light", "full")
PRETRAINED_BACKBONE_LR_SCALE = 0.1
"""The fine-tuning recipe's backbone learning rate, as a share of the heads'."""
PRETRAINED_SIZE = (128, 96)
"""The recipe's input (H, W) for a pretrained backbone without --image-size: the product photos
are 80x60, and 128x96 keeps their aspect at a size where ImageNet filters work, at about half the
CPU cost of 160x120 (BENCHMARKS.md). On a GPU, give --image-size 224."""


class ConfigError(FashionTaggerError):
    """A training option is out of range; the message names the flag."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    """How images become batches.

    Attributes:
        image_size: (H, W) to train at; None = 128x96 for a pretrained backbone (the recipe's),
            else the backbone's default (timm pretrained_cfg, or 64x64 for simple-cnn).
            `--image-size`.
        channels: 3 (RGB) or 1 (grey). `--channels`.
        resize: "squash" (stretch) or "pad" (keep aspect, pad white). `--resize`.
        augment: train-time augmentation of train batches only: "full" = random flip,
            brightness/contrast, shift-scale-rotate, blur and noise (`--augment`); "light" =
            flip and a shift of up to 2 pixels, nearly free, for short budgets where full
            augmentation costs more epochs than it gains (`--augment-light`); "none". True and
            False (older run dirs) read as "full" and "none".
        class_weights: "inverse" class frequency (normalised to mean 1, as the paper), "sqrt" of
            it (milder), or "none". `--class-weights`.
        workers: processes that decode images into the cache (0 = in this process).
            `--workers`.
        cache_dir: where decoded uint8 arrays (and backbone features) are kept between runs;
            None = `<run dir>/cache`. `--cache-dir`.
        train_split, val_split: split names read from the dataset's `split` column.
    """

    image_size: tuple[int, int] | None = None
    channels: int = 3
    resize: str = "squash"
    augment: str = "none"
    class_weights: str = "inverse"
    workers: int = 2
    cache_dir: str | None = None
    train_split: str = "train"
    val_split: str = "val"

    def __post_init__(self) -> None:
        if self.image_size is not None:
            size = tuple(int(v) for v in self.image_size)
            _check(
                len(size) == 2 and all(8 <= v <= 2048 for v in size),
                f"--image-size must be one or two numbers between 8 and 2048, not {self.image_size}",
            )
            object.__setattr__(self, "image_size", size)
        _check(self.channels in (1, 3), "--channels must be 1 or 3")
        _check(self.resize in RESIZE_MODES, f"--resize must be one of {', '.join(RESIZE_MODES)}")
        if isinstance(self.augment, bool):
            object.__setattr__(self, "augment", "full" if self.augment else "none")
        _check(self.augment in AUGMENT, f"augment must be one of {', '.join(AUGMENT)}")
        _check(
            self.class_weights in CLASS_WEIGHTS,
            f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}",
        )
        _check(self.workers >= 0, "--workers must be 0 or more")


@dataclass(frozen=True)
class ModelConfig:
    """Which network: a backbone, a head, and their options.

    Attributes:
        backbone: a timm model name (e.g. resnet50, mobilenetv3_small_100) or `simple-cnn`.
            `--backbone`.
        head: unified (Ferreira et al. 2018), multi or flat. `--head`.
        hidden: units of each head branch (0 = no hidden layer). `--hidden`.
        dropout: dropout after each branch's ReLU. `--dropout`.
        messages: what the unified head's levels pass each other: "label" (their class
            probabilities) or "latent" (their hidden representations, as the paper describes
            it; measured 0.4 point lower on articleType, see BENCHMARKS.md). `--messages`.
        head_weight_decay: L2 penalty on the head branches (5e-4 in the paper).
            `--head-weight-decay`.
        pretrained: start from timm's ImageNet weights (needs network); the same as
            `--weights timm`. `--pretrained`.
        weights: where the backbone's pretrained weights come from: an installed weights
            package by alias (`lite0`: ImageNet EfficientNet-Lite0, offline), `timm` (timm's
            hub, online), or a local file (safetensors or a torch state dict; another
            implementation's key names go through a declared converter). With an alias and the
            default backbone, the backbone becomes the alias's architecture. `none` = from
            scratch. `--weights`.
        freeze_backbone: backbone frozen throughout; features computed once and cached; only
            the heads train (seconds). `--freeze-backbone`.
        freeze_backbone_epochs: heads only for this many epochs, then everything (fine-tune);
            None = the recipe's (1 with pretrained weights and 3 or more epochs, else 0).
            `--freeze-backbone-epochs`.
        backbone_lr_scale: the backbone's learning rate as a share of the heads' (discriminative
            learning rates); None = the recipe's (0.1 with pretrained weights, else 1).
            `--backbone-lr-scale`.
        freeze_bn: keep the backbone's batch-norm statistics fixed while fine-tuning; None = the
            recipe's (on with pretrained weights and batches under 16 images, whose statistics
            are too noisy to replace ImageNet's). `--freeze-bn/--no-freeze-bn`.
        channels_last: NHWC memory layout for the backbone; None = on for timm backbones (45 %
            faster for a Lite0 step on CPU, BENCHMARKS.md), off for simple-cnn.
            `--channels-last/--no-channels-last`.
    """

    backbone: str = SIMPLE_CNN
    head: str = DEFAULT_HEAD
    hidden: int = 1024
    dropout: float = 0.3
    messages: str = "label"
    head_weight_decay: float = 5e-4
    pretrained: bool = False
    weights: str | None = None
    freeze_backbone: bool = False
    freeze_backbone_epochs: int | None = None
    backbone_lr_scale: float | None = None
    freeze_bn: bool | None = None
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        _check(bool(self.backbone), "--backbone must name a model")
        _check(self.head in head_kinds(), f"--head must be one of {', '.join(head_kinds())}")
        try:
            self.head_spec()  # the head validates its own options
        except ModelError as exc:
            raise ConfigError(str(exc)) from None
        _check(self.head_weight_decay >= 0, "--head-weight-decay must be 0 or more")
        _check(
            not (self.pretrained and self.weights),
            "--pretrained and --weights both give backbone weights: pick one",
        )
        if self.weights is not None:
            self._resolve_weights(str(self.weights))
        _check(
            self.freeze_backbone_epochs is None or self.freeze_backbone_epochs >= 0,
            "--freeze-backbone-epochs must be 0 or more",
        )
        _check(
            self.backbone_lr_scale is None or 0 < self.backbone_lr_scale <= 10,
            "--backbone-lr-scale must be in (0, 10], e.g. 0.1",
        )

    def _resolve_weights(self, weights: str) -> None:
        """`none` means from scratch; an alias picks its architecture for the default backbone."""
        if weights.lower() == "none":
            object.__setattr__(self, "weights", None)
            return
        object.__setattr__(self, "weights", weights)
        if Path(weights).expanduser().is_file():
            return
        from fashion_tagger.model.weights import TIMM, list_weights, weights_source

        _check(
            weights in list_weights(),
            f"--weights {weights}: no such file, and not one of {', '.join(list_weights())} "
            "(or none)",
        )
        if weights != TIMM and self.backbone == SIMPLE_CNN:  # the default: follow the weights
            object.__setattr__(self, "backbone", weights_source(weights).arch)

    @property
    def has_pretrained(self) -> bool:
        """Whether the backbone starts from pretrained weights (what the recipe keys on)."""
        return self.pretrained or self.weights is not None

    def head_spec(self) -> HeadSpec:
        """The typed spec of the chosen head, with the options of this config that it has."""
        return head_spec(self.head, **{n: getattr(self, n) for n in head_option_names(self.head)})


def parse_max_time(value: str | float | None) -> dict[str, int] | None:
    """`--max-time`: minutes (`90`, `1.5`) or `HH:MM:SS` to Lightning's max_time dict."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    m = re.fullmatch(r"(\d+):(\d{1,2}):(\d{1,2})", text)
    if m:
        h, mi, s = (int(g) for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    else:
        try:
            seconds = round(float(text) * 60)
        except ValueError:
            raise ConfigError(f"--max-time {value!r}: give minutes (e.g. 30) or HH:MM:SS") from None
    _check(seconds > 0, "--max-time must be positive")
    return {
        "days": seconds // 86400,
        "hours": seconds % 86400 // 3600,
        "minutes": seconds % 3600 // 60,
        "seconds": seconds % 60,
    }


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: epochs, batches, learning rate schedule, devices, checkpoints.

    Attributes:
        data, model: see `DataConfig`, `ModelConfig`.
        epochs: passes over the train split. `--epochs`.
        batch_size: images per step (per device). `--batch-size`.
        lr: peak learning rate, or "auto" for Lightning's LR finder. `--lr`.
        weight_decay: AdamW weight decay of the backbone. `--weight-decay`.
        schedule: onecycle, cosine or constant. `--schedule`.
        label_smoothing: of the level losses (0 = off). `--label-smoothing`.
        precision: Lightning precision ("32-true", "bf16-mixed", "16-mixed"). `--precision`.
        accelerator, strategy: passed to Lightning's Trainer as they are ("cpu", "gpu";
            "ddp", "ddp_spawn", "fsdp" ...). `--accelerator`, `--strategy`.
        devices, num_nodes: Lightning Trainer devices and nodes (DDP when more than one).
            `--devices`, `--num-nodes`.
        seed: for splits of batches, initialisation and augmentation. `--seed`.
        max_time: the training budget (minutes or HH:MM:SS); with a onecycle or cosine
            schedule the schedule follows the clock and the run ends on time with it
            finished (`callbacks.ClockSchedule`); with a constant one it is a plain stop.
            `--max-time`.
        train_fraction: share of the train batches seen per epoch (Lightning's
            limit_train_batches), so a short time budget still ends its LR schedule.
            `--train-fraction`.
        checkpoint_every: also save checkpoints/last.ckpt every this many steps, so a run killed
            mid-epoch resumes near where it stopped (0 = at epoch ends only).
            `--checkpoint-every`.
        progress: show a progress bar.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10
    batch_size: int = 64
    lr: float | str = 2e-3
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    precision: str = "32-true"
    accelerator: str = "auto"
    strategy: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    seed: int = 0
    max_time: str | None = None
    checkpoint_every: int = 200
    train_fraction: float = 1.0
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "--epochs must be 1 or more")
        _check(self.batch_size >= 1, "--batch-size must be 1 or more")
        if isinstance(self.lr, str) and self.lr != "auto":
            try:
                object.__setattr__(self, "lr", float(self.lr))
            except ValueError:
                raise ConfigError(f"--lr must be a number or 'auto', not {self.lr!r}") from None
        if not isinstance(self.lr, str):
            _check(0 < float(self.lr) < 10, "--lr must be a positive number (e.g. 2e-3) or auto")
        _check(self.weight_decay >= 0, "--weight-decay must be 0 or more")
        _check(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}")
        _check(0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)")
        _check(self.num_nodes >= 1, "--num-nodes must be 1 or more")
        _check(0 < self.train_fraction <= 1, "--train-fraction must be in (0, 1]")
        _check(self.checkpoint_every >= 0, "--checkpoint-every must be 0 or more")
        parse_max_time(self.max_time)
        if self.model.freeze_backbone and self.data.augment != "none":
            raise ConfigError(
                "--freeze-backbone trains on cached features, which cannot be augmented: "
                "drop --augment or use --freeze-backbone-epochs"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_recipe(self) -> TrainConfig:
        """This config with every recipe option left as None filled in (`ModelConfig` says
        how). The run saves the result, so a resume and model.json show what was used."""
        m, pre = self.model, self.model.has_pretrained
        freeze = m.freeze_backbone_epochs
        if freeze is None:
            freeze = 1 if pre and not m.freeze_backbone and self.epochs >= 3 else 0
        data = self.data
        if data.image_size is None and pre and m.backbone != SIMPLE_CNN:
            data = replace(data, image_size=PRETRAINED_SIZE)
        model = replace(
            m,
            freeze_backbone_epochs=freeze,
            backbone_lr_scale=m.backbone_lr_scale or (PRETRAINED_BACKBONE_LR_SCALE if pre else 1.0),
            freeze_bn=m.freeze_bn if m.freeze_bn is not None else pre and self.batch_size < 16,
            channels_last=(
                m.channels_last if m.channels_last is not None else m.backbone != SIMPLE_CNN
            ),
        )
        return replace(self, data=data, model=model)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from `to_dict()` output (unknown keys are ignored)."""
        try:
            top = {
                f.name: d[f.name]
                for f in fields(cls)
                if f.name in d and f.name not in ("data", "model")
            }
            data = {
                f.name: d["data"][f.name] for f in fields(DataConfig) if f.name in d.get("data", {})
            }
            model = {
                f.name: d["model"][f.name]
                for f in fields(ModelConfig)
                if f.name in d.get("model", {})
            }
            return cls(data=DataConfig(**data), model=ModelConfig(**model), **top)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"saved training config is malformed: {exc}") from exc
