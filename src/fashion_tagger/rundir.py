"""The run dir: what `train` writes and every later stage reads (a versioned contract).

Layout: `model.json` (how to rebuild and feed the model), `model.safetensors` (its weights; no
pickle is ever loaded from a run dir), `checkpoints/` (Lightning: best.ckpt, last.ckpt, to resume),
`logs/` (TensorBoard + `metrics.csv`), `curves.png`; later `metrics.json` + `report.html`
(evaluate) and `model.onnx` (export).

`model.json` records the sha256 of the weights, so a tampered or swapped weights file is caught
on open, and a format version, so a reader only ever reads a layout it understands.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashion_tagger._io import atomic_path, write_json_atomic
from fashion_tagger.errors import RunDirError
from fashion_tagger.taxonomy import Taxonomy, TaxonomyError

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
DEFAULT_THRESHOLD = 0.75
"""Attribute threshold when none was calibrated (the value of Ferreira et al. 2018)."""

RESIZE_MODES = ("squash", "pad")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the model and feed it: the contract of every consumer.

    Attributes:
        model_id: `<run dir name>-<first 12 hex of the weights' sha256>`.
        backbone: `{"name", "pretrained", "in_chans"}` (timm name or `simple-cnn`).
        head: `{"kind": unified|multi|flat, "hidden", "dropout", ...}`.
        input_size: (H, W) in pixels.
        channels: 3 (RGB) or 1 (grey).
        mean, std: per-channel normalisation of pixels scaled to [0, 1].
        resize: "squash" (stretch to size) or "pad" (keep aspect, pad with white).
        taxonomy: the category tree; level l of the model predicts `taxonomy.names[l]`.
        attribute_names: `group=value` names, one per attribute output.
        thresholds: decision threshold per attribute.
    """

    model_id: str
    backbone: dict[str, Any]
    head: dict[str, Any]
    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str
    taxonomy: Taxonomy
    attribute_names: list[str] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    default_threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
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
        if len(self.thresholds) != len(self.attribute_names):
            raise RunDirError(
                f"{len(self.thresholds)} attribute thresholds for "
                f"{len(self.attribute_names)} attributes"
            )

    @property
    def level_names(self) -> tuple[str, ...]:
        return self.taxonomy.level_names

    def to_json(self) -> dict[str, Any]:
        """The model.json keys this spec owns (the rest: training, data, metrics, hashes)."""
        return {
            "model_id": self.model_id,
            "backbone": dict(self.backbone),
            "head": dict(self.head),
            "input": {
                "size": list(self.input_size),
                "channels": self.channels,
                "mean": list(self.mean),
                "std": list(self.std),
                "resize": self.resize,
            },
            "taxonomy": self.taxonomy.to_dict(),
            "attributes": {
                "names": list(self.attribute_names),
                "thresholds": [float(t) for t in self.thresholds],
                "default_threshold": float(self.default_threshold),
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelSpec:
        """Parse the spec out of a model.json dict; malformed content raises `RunDirError`."""
        try:
            inp = d["input"]
            attrs = d.get("attributes") or {}
            names = [str(n) for n in attrs.get("names", [])]
            default = float(attrs.get("default_threshold", DEFAULT_THRESHOLD))
            return cls(
                model_id=str(d.get("model_id", "")),
                backbone=dict(d["backbone"]),
                head=dict(d["head"]),
                input_size=tuple(int(v) for v in inp["size"]),  # type: ignore[arg-type]
                channels=int(inp["channels"]),
                mean=tuple(float(v) for v in inp["mean"]),
                std=tuple(float(v) for v in inp["std"]),
                resize=str(inp.get("resize", "squash")),
                taxonomy=Taxonomy.from_dict(d["taxonomy"]),
                attribute_names=names,
                thresholds=[float(t) for t in attrs.get("thresholds") or [default] * len(names)],
                default_threshold=default,
            )
        except (KeyError, TypeError, ValueError, AttributeError, TaxonomyError) as exc:
            raise RunDirError(f"model.json is malformed ({type(exc).__name__}: {exc})") from exc


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class RunDir:
    """An opened, validated run dir.

    Example:
        >>> run = RunDir.open("runs/products")
        >>> run.spec.taxonomy.level_names
        ('masterCategory', 'subCategory', 'articleType')
    """

    path: Path
    config: dict[str, Any]
    spec: ModelSpec

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def model_json_path(self) -> Path:
        return self.path / MODEL_JSON

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def logs(self) -> Path:
        return self.path / LOGS

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> RunDir:
        """Open a run dir, checking model.json and that the weights are the ones it describes.

        Raises:
            RunDirError: missing dir or files, invalid JSON, unknown format version, malformed
                spec, or weights whose sha256 differs from model.json's (`verify=False` skips
                hashing, for callers that only read metadata).
        """
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(
                f"run dir {path} does not exist; train one with `fashion-tagger train`"
            )
        mj = path / MODEL_JSON
        if not mj.is_file():
            raise RunDirError(
                f"{path} is not a run dir: {MODEL_JSON} is missing (was training interrupted? "
                f"resume it with `fashion-tagger train --resume {path}`)"
            )
        try:
            config = json.loads(mj.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{mj} is not valid JSON ({exc}); re-train or restore it") from exc
        if not isinstance(config, dict):
            raise RunDirError(f"{mj} must hold a JSON object")
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise RunDirError(
                f"{mj} has format version {version!r}; this fashion-tagger reads version "
                f"{FORMAT_VERSION}. Upgrade fashion-tagger or re-train."
            )
        spec = ModelSpec.from_json(config)
        weights = path / WEIGHTS
        if not weights.is_file():
            raise RunDirError(f"{path}: {WEIGHTS} is missing; re-train or restore it")
        if verify:
            expected = config.get("weights_sha256")
            actual = _sha256(weights)
            if expected != actual:
                raise RunDirError(
                    f"{weights} does not match {MODEL_JSON} (sha256 {actual[:12]}, expected "
                    f"{str(expected)[:12]}): the weights were changed or swapped; restore them"
                )
        return cls(path, config, spec)

    def update_model_json(self, **fields: Any) -> RunDir:
        """Rewrite model.json atomically with `fields` replaced; return the re-read run dir.

        Used e.g. by `calibrate` to store per-attribute thresholds
        (`attributes={**run.config["attributes"], "thresholds": [...]}`).
        """
        config = {**self.config, **fields}
        ModelSpec.from_json(config)  # refuse to write a spec nobody could read back
        write_json_atomic(self.model_json_path, config)
        return RunDir(self.path, config, ModelSpec.from_json(config))


def save_model(
    path: str | Path,
    module: torch.nn.Module,
    spec: ModelSpec,
    extra: dict[str, Any] | None = None,
) -> RunDir:
    """Write model.safetensors then model.json (both atomically) and return the run dir.

    `model_id` and `weights_sha256` are computed here; `extra` adds the other model.json keys
    (`training`, `data`, `metrics`).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(path / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
        sha = _sha256(tmp)
    model_id = f"{path.resolve().name}-{sha[:12]}"
    config: dict[str, Any] = {"format_version": FORMAT_VERSION}
    config.update(spec.to_json())
    config["model_id"] = model_id
    for key in ("training", "data", "metrics"):
        config[key] = {}
    for key, value in (extra or {}).items():
        if key in ("format_version", "weights_sha256", "model_id"):
            continue
        config[key] = value
    config["weights_sha256"] = sha
    write_json_atomic(path / MODEL_JSON, config)
    return RunDir.open(path, verify=False)
