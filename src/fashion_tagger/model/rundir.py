"""The run dir: what `train` writes and every later stage reads (a versioned contract).

Layout (each name is a property of `RunPaths`, and nowhere else): `model.json` (how to rebuild
and feed the model), `model.safetensors` (its weights; no pickle is ever loaded from a run dir),
`train_config.json` (what `--resume` reads back), `checkpoints/` (Lightning: best.ckpt,
last.ckpt, to resume), `logs/` (TensorBoard + `metrics.csv`), `curves.png`; later
`metrics.json` + `report.html` (evaluate) and `model.onnx` (export).

`model.json` records the sha256 of the weights, so a tampered or swapped weights file is caught
on open, and a format version, so a reader only ever reads a layout it understands.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashion_tagger._io import atomic_path, sha256_file, write_json_atomic
from fashion_tagger.errors import RunDirError
from fashion_tagger.model.spec import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunPaths:
    """Where each file of a run dir lives; usable before the run dir is complete (training).

    Example:
        >>> RunPaths(Path("runs/p1")).last_ckpt
        PosixPath('runs/p1/checkpoints/last.ckpt')
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def model_json(self) -> Path:
        return self.path / "model.json"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def onnx(self) -> Path:
        return self.path / "model.onnx"

    @property
    def train_config(self) -> Path:
        return self.path / "train_config.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_ckpt(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def tensorboard(self) -> Path:
        return self.logs / "tensorboard"

    @property
    def metrics_csv(self) -> Path:
        """One row per epoch: losses and validation accuracies (what the curves show)."""
        return self.logs / "metrics.csv"

    def read_metrics(self) -> list[dict[str, float]]:
        """The rows of `metrics_csv` as numbers (empty cells left out); [] before any epoch."""
        if not self.metrics_csv.is_file():
            return []
        with open(self.metrics_csv, newline="") as f:
            return [
                {k: float(v) for k, v in r.items() if v not in ("", None)}
                for r in csv.DictReader(f)
            ]

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def lr_find(self) -> Path:
        """The LR finder's plot (`--lr auto`)."""
        return self.path / "lr_find.png"

    @property
    def cache(self) -> Path:
        """Default cache of decoded images and features (removed when training ends)."""
        return self.path / "cache"

    @property
    def metrics_json(self) -> Path:
        return self.path / "metrics.json"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"


def _read_model_json(paths: RunPaths) -> dict[str, Any]:
    path, mj = paths.path, paths.model_json
    if not path.is_dir():
        raise RunDirError(f"run dir {path} does not exist; train one with `fashion-tagger train`")
    if not mj.is_file():
        raise RunDirError(
            f"{path} is not a run dir: {mj.name} is missing (was training interrupted? "
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
    return config


@dataclass(frozen=True)
class RunDir(RunPaths):
    """An opened, validated run dir.

    Example:
        >>> run = RunDir.open("runs/products")
        >>> run.spec.taxonomy.level_names
        ('masterCategory', 'subCategory', 'articleType')
    """

    config: dict[str, Any]
    spec: ModelSpec

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> RunDir:
        """Open a run dir, checking model.json and that the weights are the ones it describes.

        Raises:
            RunDirError: missing dir or files, invalid JSON, unknown format version, malformed
                spec, or weights whose sha256 differs from model.json's (`verify=False` skips
                hashing, for callers that only read metadata).
        """
        paths = RunPaths(Path(path))
        config = _read_model_json(paths)
        spec = ModelSpec.from_json(config)
        weights = paths.weights
        if not weights.is_file():
            raise RunDirError(f"{paths.path}: {weights.name} is missing; re-train or restore it")
        if verify:
            expected = config.get("weights_sha256")
            actual = sha256_file(weights)
            if expected != actual:
                raise RunDirError(
                    f"{weights} does not match {paths.model_json.name} (sha256 {actual[:12]}, "
                    f"expected {str(expected)[:12]}): the weights were changed or swapped; "
                    "restore them"
                )
        return cls(paths.path, config, spec)

    def update_model_json(self, **fields: Any) -> RunDir:
        """Rewrite model.json atomically with `fields` replaced; return the re-read run dir.

        Used e.g. by `calibrate` to store per-attribute thresholds
        (`attributes={**run.config["attributes"], "thresholds": [...]}`).
        """
        config = {**self.config, **fields}
        ModelSpec.from_json(config)  # refuse to write a spec nobody could read back
        write_json_atomic(self.model_json, config)
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

    paths = RunPaths(Path(path))
    paths.path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(paths.weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
        sha = sha256_file(tmp)
    model_id = f"{paths.path.resolve().name}-{sha[:12]}"
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
    write_json_atomic(paths.model_json, config)
    return RunDir.open(paths.path, verify=False)
