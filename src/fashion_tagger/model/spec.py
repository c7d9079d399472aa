"""What a model is, as model.json says it: `ModelSpec` and the typed spec of each head.

Torch-free on purpose: opening a run dir, reading an ONNX file's metadata and `--help` never
import torch. The spec is serialised here and only here (`ModelSpec.to_json`/`from_json`); the
run dir, the ONNX metadata and the service's `/v1/model` all reuse it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from fashion_tagger.errors import FashionTaggerError, RunDirError
from fashion_tagger.taxonomy import Taxonomy, TaxonomyError

SIMPLE_CNN = "simple-cnn"
"""Our small CNN backbone for tiny images (trained from scratch); every other name is timm's."""

DEFAULT_THRESHOLD = 0.75
"""Attribute threshold when none was calibrated (the value of Ferreira et al. 2018)."""

RESIZE_MODES = ("squash", "pad", "fashion-mnist")
"""How an image reaches the input size: stretch it, fit it inside and pad with white, or
Zalando's Fashion-MNIST conversion (trim, fit, sharpen, centre, negate, grey), which brings
product photos into the domain of a model trained on Fashion-MNIST."""
INTERPOLATIONS = ("bilinear", "bicubic")
"""How images are resampled to the input size: what the pretrained weights were trained with
(timm's Lite0 says bicubic), bilinear otherwise and for run dirs older than this key."""

DEFAULT_HEAD = "multi"
"""The head `train` uses unless told: the one the measurements favour. `multi` is never behind
`unified`: it led by 0.7-0.8 point from scratch, tied on frozen pretrained features, and led
in every seed with the backbone fine-tuned (BENCHMARKS.md, the heads). `unified`, the paper's
model, stays an option with that evidence."""
LEGACY_HEAD = "unified"
"""What a model.json without `head.kind` was trained with: the default of those versions."""


class ModelError(FashionTaggerError):
    """A backbone, head or weights file cannot be used as asked."""


# -- heads ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadSpec:
    """The options every head has; a head with more subclasses this and registers it.

    Attributes:
        hidden: units of each dense branch (0 = no hidden layer). `--hidden`.
        dropout: dropout after each branch's ReLU. `--dropout`.
    """

    kind: ClassVar[str] = ""
    hidden: int = 1024
    dropout: float = 0.3

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", int(self.hidden))
        object.__setattr__(self, "dropout", float(self.dropout))
        if self.hidden < 0:
            raise ModelError(f"--hidden must be 0 or more, not {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"--dropout must be in [0, 1), not {self.dropout}")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The options of this head (each is a `--flag` of `train` and a key of model.json)."""
        return tuple(f.name for f in fields(cls))

    def to_json(self) -> dict[str, Any]:
        """model.json's `head` object: `kind` and every option."""
        return {"kind": self.kind, **asdict(self)}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> HeadSpec:
        """Parse model.json's `head`; an option the head does not have is an error, not ignored.

        A missing `kind` reads as `LEGACY_HEAD` (the default when model.json could lack it), a
        missing option as its default (a model.json written before the option existed).
        """
        opts = dict(d)
        return head_spec(str(opts.pop("kind", LEGACY_HEAD)), **opts)


_HEAD_SPECS: dict[str, type[HeadSpec]] = {}
S = TypeVar("S", bound=type[HeadSpec])


def register_head_spec(kind: str) -> Callable[[S], S]:
    """Register the spec class of head `kind` (its module is registered in `model.heads`)."""

    def deco(cls: S) -> S:
        cls.kind = kind
        _HEAD_SPECS[kind] = cls
        return cls

    return deco


def head_kinds() -> list[str]:
    """The names `--head` accepts."""
    return sorted(_HEAD_SPECS)


def head_option_names(kind: str) -> tuple[str, ...]:
    """The options head `kind` has (each a `--flag` of `train` and a key of model.json)."""
    if kind not in _HEAD_SPECS:
        raise ModelError(f"unknown head {kind!r}; choose one of {', '.join(head_kinds())}")
    return _HEAD_SPECS[kind].option_names()


def head_spec(kind: str, **options: Any) -> HeadSpec:
    """The typed spec of head `kind` with `options`; unknown heads and options raise."""
    names = head_option_names(kind)
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ModelError(
            f"head {kind!r} has no option {', '.join(unknown)}; its options are {', '.join(names)}"
        )
    return _HEAD_SPECS[kind](**options)


@register_head_spec("multi")
@dataclass(frozen=True)
class MultiHeadSpec(HeadSpec):
    """Independent heads per level and for attributes: the first baseline."""


@register_head_spec("flat")
@dataclass(frozen=True)
class FlatHeadSpec(HeadSpec):
    """One softmax over the leaves: the second baseline."""


#: What the unified head's levels pass each other. "label": a projection of the neighbour's class
#: probabilities, as in the SINN model the paper started from (the default, and what every run dir
#: written before the option existed holds). "latent": a projection of the neighbour's hidden
#: representation, as Ferreira et al. describe moving the message passing "into an enriched
#: latent space". From scratch on the products data the two are within noise of each other.
MESSAGES = ("label", "latent")


@register_head_spec("unified")
@dataclass(frozen=True)
class UnifiedHeadSpec(HeadSpec):
    """The structured-output head of Ferreira et al. (2018).

    Attributes:
        messages: what the levels pass each other, one of `MESSAGES`. `--messages`.
    """

    messages: str = "label"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.messages not in MESSAGES:
            raise ModelError(
                f"--messages must be one of {', '.join(MESSAGES)}, not {self.messages!r}"
            )


# -- the model --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the model and feed it: the contract of every consumer.

    Attributes:
        model_id: `<run dir name>-<first 12 hex of the weights' sha256>`.
        backbone: `{"name", "pretrained", "in_chans", ...}` (timm name or `simple-cnn`).
        head: the typed head spec (a model.json `head` dict is accepted and parsed).
        input_size: (H, W) in pixels.
        channels: 3 (RGB) or 1 (grey).
        mean, std: per-channel normalisation of pixels scaled to [0, 1].
        resize: one of `RESIZE_MODES`.
        interpolation: one of `INTERPOLATIONS`: the resampling filter of the resize.
        taxonomy: the category tree; level l of the model predicts `taxonomy.names[l]`.
        attribute_names: `group=value` names, one per attribute output.
        thresholds: decision threshold per attribute.
        temperatures: one per taxonomy level: level l's probabilities become
            softmax(log p / T_l) before decoding (`model.calibration`); model.json's
            `temperature`. Empty (and absent in older run dirs) means 1.0 everywhere.
    """

    model_id: str
    backbone: dict[str, Any]
    head: HeadSpec
    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str
    taxonomy: Taxonomy
    attribute_names: list[str] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    default_threshold: float = DEFAULT_THRESHOLD
    interpolation: str = "bilinear"
    temperatures: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.head, Mapping):
            try:
                object.__setattr__(self, "head", HeadSpec.from_json(self.head))
            except (ModelError, TypeError, ValueError) as exc:
                raise RunDirError(f"model head: {exc}") from exc
        h, w = (int(v) for v in self.input_size)
        object.__setattr__(self, "input_size", (h, w))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not self.thresholds:
            object.__setattr__(
                self, "thresholds", [float(self.default_threshold)] * len(self.attribute_names)
            )
        if self.channels not in (1, 3):
            raise RunDirError(f"input channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise RunDirError("input mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise RunDirError("input std values must be positive")
        if h <= 0 or w <= 0:
            raise RunDirError(f"input size {h}x{w} must be positive")
        if self.resize not in RESIZE_MODES:
            raise RunDirError(f"input resize must be one of {RESIZE_MODES}, not {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise RunDirError(
                f"input interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}"
            )
        if len(self.thresholds) != len(self.attribute_names):
            raise RunDirError(
                f"{len(self.thresholds)} attribute thresholds for "
                f"{len(self.attribute_names)} attributes"
            )
        self._check_temperatures()

    def _check_temperatures(self) -> None:
        """Normalise `temperatures` to one float per level (1.0 when empty); each must be a
        finite number > 0."""
        depth = self.taxonomy.depth
        temps = tuple(float(t) for t in self.temperatures) or (1.0,) * depth
        if len(temps) != depth:
            raise RunDirError(f"{len(temps)} temperatures for {depth} taxonomy levels")
        if not all(math.isfinite(t) and t > 0 for t in temps):
            raise RunDirError(f"temperatures must be finite and > 0, not {list(temps)}")
        object.__setattr__(self, "temperatures", temps)

    @property
    def level_names(self) -> tuple[str, ...]:
        return self.taxonomy.level_names

    def to_json(self) -> dict[str, Any]:
        """The model.json keys this spec owns (the rest: training, data, metrics, hashes)."""
        return {
            "model_id": self.model_id,
            "backbone": dict(self.backbone),
            "head": self.head.to_json(),
            "input": {
                "size": list(self.input_size),
                "channels": self.channels,
                "mean": list(self.mean),
                "std": list(self.std),
                "resize": self.resize,
                "interpolation": self.interpolation,
            },
            "taxonomy": self.taxonomy.to_dict(),
            "temperature": dict(zip(self.level_names, self.temperatures, strict=True)),
            "attributes": {
                "names": list(self.attribute_names),
                "thresholds": [float(t) for t in self.thresholds],
                "default_threshold": float(self.default_threshold),
            },
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Parse the spec out of a model.json dict; malformed content raises `RunDirError`."""
        try:
            inp = d["input"]
            attrs = d.get("attributes") or {}
            names = [str(n) for n in attrs.get("names", [])]
            default = float(attrs.get("default_threshold", DEFAULT_THRESHOLD))
            taxonomy = Taxonomy.from_dict(d["taxonomy"])
            return cls(
                model_id=str(d.get("model_id", "")),
                backbone=dict(d["backbone"]),
                head=HeadSpec.from_json(d["head"]),
                input_size=tuple(int(v) for v in inp["size"]),  # type: ignore[arg-type]
                channels=int(inp["channels"]),
                mean=tuple(float(v) for v in inp["mean"]),
                std=tuple(float(v) for v in inp["std"]),
                resize=str(inp.get("resize", "squash")),
                taxonomy=taxonomy,
                attribute_names=names,
                thresholds=[float(t) for t in attrs.get("thresholds") or [default] * len(names)],
                default_threshold=default,
                interpolation=str(inp.get("interpolation", "bilinear")),
                temperatures=_temperatures(d.get("temperature"), taxonomy),
            )
        except (KeyError, TypeError, ValueError, AttributeError, TaxonomyError, ModelError) as exc:
            raise RunDirError(f"model.json is malformed ({type(exc).__name__}: {exc})") from exc


def _temperatures(value: Any, taxonomy: Taxonomy) -> tuple[float, ...]:
    """model.json's `temperature`: {level name: T} (what `to_json` writes), or one number for
    every level; absent (a run dir older than the key) means 1.0 everywhere."""
    if value is None:
        return ()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (float(value),) * taxonomy.depth
    if not isinstance(value, Mapping):
        raise ValueError(f"temperature must be an object of level: T, not {value!r}")
    names = taxonomy.level_names
    if set(value) != set(names):
        raise ValueError(
            f"temperature names levels {sorted(value)}; the taxonomy has {list(names)}"
        )
    try:
        return tuple(float(value[n]) for n in names)
    except (TypeError, ValueError):
        raise ValueError(f"temperature values must be numbers, not {dict(value)}") from None
