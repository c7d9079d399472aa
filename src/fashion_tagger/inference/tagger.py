"""`Tagger`: load a run dir and turn images into valid category paths and attributes.

A backend is any callable `(x: (N, C, H, W) float32) -> [probs_level_0, ..., attributes]`: the
torch model here, or ONNX Runtime (`inference/onnx.py`). Decoding is the same for both: the
best-scoring valid root-to-leaf path (`model.decode`, as validation and `evaluate` decode), the
top-k leaves, and the attributes at or above their threshold. The model's per-level
temperatures (model.json `temperature`, `model.calibration`) are applied here, in
`predict_arrays`, the one door every consumer and both backends go through: decoded paths,
confidences and `evaluate`'s numbers all use the calibrated probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.model.calibration import apply_temperatures
from fashion_tagger.model.decode import LeafTable
from fashion_tagger.model.preprocess import load_for_model
from fashion_tagger.model.rundir import RunDir
from fashion_tagger.model.spec import ModelSpec

Backend = Callable[[np.ndarray], list[np.ndarray]]
ImageSource = str | Path | bytes | Image.Image
BACKENDS = ("auto", "torch", "onnx")


@dataclass
class Probs:
    """Model outputs as probabilities: `levels[l]` is (N, C_l), rows sum to 1; `attributes` (N, A)."""

    levels: list[np.ndarray]
    attributes: np.ndarray

    def __len__(self) -> int:
        return len(self.levels[0]) if self.levels else len(self.attributes)


@dataclass
class ProbsBatch:
    """One batch of `Tagger.iter_probs`.

    Attributes:
        start: position of the batch's first image in the input.
        size: images in the batch.
        ok: positions (within the batch) of the readable images: the rows of `probs`.
        probs: their probabilities (None when none was readable).
        errors: position (within the batch) -> why that image could not be read.
    """

    start: int
    size: int
    ok: list[int]
    probs: Probs | None
    errors: dict[int, str]


@dataclass
class Prediction:
    """One image's answer: a valid path with per-level scores, top-k leaves, attributes."""

    image: str | None
    path: list[dict[str, Any]] = field(default_factory=list)
    top_k: list[dict[str, Any]] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def labels(self) -> list[str]:
        return [p["label"] for p in self.path]

    def to_dict(self) -> dict[str, Any]:
        """The prediction as plain JSON-ready data (the rows are new dicts, safe to change)."""
        return {
            "image": self.image,
            "path": [dict(p) for p in self.path],
            "top_k": [dict(t) for t in self.top_k],
            "attributes": [dict(a) for a in self.attributes],
            "error": self.error,
        }


class TorchBackend:
    """Runs the PyTorch model of a run dir on CPU (or `device`)."""

    name = "torch"

    def __init__(self, run: RunDir, device: str = "cpu") -> None:
        import torch

        from fashion_tagger.model.load import load_model

        self._torch = torch
        self.model, _ = load_model(run)
        self.device = torch.device(device)
        self.model.to(self.device)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = self.model.probabilities(
                torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            )
        return [o.float().cpu().numpy() for o in out]


def _onnx_available(run: RunDir) -> bool:
    if not run.onnx.is_file():
        return False
    try:
        import onnxruntime  # noqa: F401

        import fashion_tagger.inference.onnx  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(run: RunDir, backend: str = "auto") -> str:
    """The backend a run dir will be tagged with (`torch` or `onnx`), checked without loading a
    model: `auto` = ONNX when model.onnx exists and onnxruntime imports, else torch; an explicit
    `onnx` needs both, or raises saying how to get them."""
    if backend not in BACKENDS:
        raise FashionTaggerError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "auto":
        return "onnx" if _onnx_available(run) else "torch"
    if backend == "onnx":
        if not run.onnx.is_file():
            raise FashionTaggerError(
                f"{run.path} has no {run.onnx.name}; create it with `fashion-tagger export "
                f"{run.path} --format onnx` or use --backend torch"
            )
        from fashion_tagger.errors import require

        require("onnxruntime", "onnx")
    return backend


class Tagger:
    """A trained model ready to tag images.

    Example:
        >>> tagger = Tagger.load("runs/products")
        >>> [p.labels for p in tagger.predict(["shirt.jpg"])]
        [['Apparel', 'Topwear', 'Shirts']]
    """

    def __init__(self, spec: ModelSpec, backend: Backend, backend_name: str = "custom") -> None:
        self.spec = spec
        self.backend = backend
        self.backend_name = backend_name
        self.leaves = LeafTable.from_taxonomy(spec.taxonomy)
        self._thresholds = np.asarray(spec.thresholds, dtype=np.float32)

    @classmethod
    def load(cls, run_dir: str | Path | RunDir, backend: str = "auto") -> Tagger:
        """Open a run dir with a backend: `auto` = ONNX when model.onnx exists and onnxruntime
        imports, else torch."""
        run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
        if resolve_backend(run, backend) == "onnx":
            from fashion_tagger.inference.onnx import OnnxBackend

            return cls(run.spec, OnnxBackend(run.onnx), "onnx")
        return cls(run.spec, TorchBackend(run), "torch")

    # -- model ----------------------------------------------------------------------------------
    def predict_arrays(self, x: np.ndarray) -> Probs:
        """Probabilities for a preprocessed batch (N, C, H, W) float32: the backend's softmax
        per level, scaled by the spec's temperatures (softmax(log p / T) per level)."""
        out = self.backend(np.asarray(x, dtype=np.float32))
        depth = self.spec.taxonomy.depth
        if len(out) != depth + 1:
            raise FashionTaggerError(
                f"the backend returned {len(out)} outputs; the model has {depth} levels + attributes"
            )
        attrs = np.asarray(out[depth], dtype=np.float32).reshape(len(x), -1)
        levels = [np.asarray(o, dtype=np.float32) for o in out[:depth]]
        return Probs(apply_temperatures(levels, self.spec.temperatures), attrs)

    # -- decoding -------------------------------------------------------------------------------
    def best_paths(self, probs: Probs) -> np.ndarray:
        """(N, L) class index per level of each image's best valid path, -1 below its depth."""
        return self.leaves.best_paths(probs.levels)

    def decode(
        self, probs: Probs, top_k: int = 5, names: Sequence[str | None] | None = None
    ) -> list[Prediction]:
        """Probabilities to predictions: the best valid path (`model.decode`), the `top_k`
        leaves by path score, the attributes at or above their threshold."""
        tax = self.spec.taxonomy
        scores = self.leaves.path_log_scores(probs.levels)
        order = np.argsort(-scores, axis=1, kind="stable")[:, : max(1, top_k)]
        out = []
        for i in range(len(probs)):
            best = self.leaves.paths[order[i, 0]]
            path = [
                {
                    "level": tax.level_names[lvl],
                    "label": tax.names[lvl][c],
                    "score": float(probs.levels[lvl][i, c]),
                }
                for lvl, c in enumerate(best)
            ]
            tops = [
                {
                    "path": list(tax.decode(self.leaves.paths[j])),
                    "score": float(np.exp(scores[i, j])),
                }
                for j in order[i, :top_k]
            ]
            attrs = []
            if probs.attributes.shape[1]:
                row = probs.attributes[i]
                hits = np.flatnonzero(row >= self._thresholds)
                for a in hits[np.argsort(-row[hits], kind="stable")]:
                    attrs.append({"name": self.spec.attribute_names[a], "score": float(row[a])})
            out.append(
                Prediction(
                    image=None if names is None else names[i],
                    path=path,
                    top_k=tops,
                    attributes=attrs,
                )
            )
        return out

    # -- images ---------------------------------------------------------------------------------
    def _load(self, source: ImageSource) -> np.ndarray | str:
        """The model input of one image, or the reason it could not be read."""
        try:
            return load_for_model(source, self.spec)
        except (FashionTaggerError, OSError, ValueError) as exc:
            return str(exc) or type(exc).__name__

    def iter_probs(
        self, images: Sequence[ImageSource], batch_size: int = 32, workers: int = 4
    ) -> Iterator[ProbsBatch]:
        """Probabilities batch by batch, in input order; images of the next batch decode (in
        threads) while the model runs on this one. What `iter_predict` decodes and `evaluate`
        scores."""
        batch_size = max(1, batch_size)
        starts = range(0, len(images), batch_size)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

            def submit(start: int) -> list[Future]:
                return [pool.submit(self._load, s) for s in images[start : start + batch_size]]

            pending = submit(starts[0]) if starts else []
            for b, start in enumerate(starts):
                loaded = [f.result() for f in pending]
                pending = submit(starts[b + 1]) if b + 1 < len(starts) else []
                ok = [i for i, a in enumerate(loaded) if not isinstance(a, str)]
                errors = {i: a for i, a in enumerate(loaded) if isinstance(a, str)}
                probs = self.predict_arrays(np.stack([loaded[i] for i in ok])) if ok else None
                yield ProbsBatch(start, len(loaded), ok, probs, errors)

    def iter_predict(
        self, images: Sequence[ImageSource], batch_size: int = 32, top_k: int = 5, workers: int = 4
    ) -> Iterator[list[Prediction]]:
        """Predictions batch by batch (see `iter_probs`); an unreadable image gets `error`."""
        for batch in self.iter_probs(images, batch_size, workers):
            names = [_name(s) for s in images[batch.start : batch.start + batch.size]]
            preds: list[Prediction | None] = [None] * batch.size
            if batch.probs is not None:
                decoded = self.decode(batch.probs, top_k, names=[names[i] for i in batch.ok])
                for i, p in zip(batch.ok, decoded, strict=True):
                    preds[i] = p
            for i, error in batch.errors.items():
                preds[i] = Prediction(image=names[i], error=error)
            yield [p for p in preds if p is not None]

    def predict(
        self, images: Sequence[ImageSource], batch_size: int = 32, top_k: int = 5
    ) -> list[Prediction]:
        """Tag images (paths, bytes or PIL images); an unreadable one gets `error`, not an
        exception."""
        return [p for batch in self.iter_predict(list(images), batch_size, top_k) for p in batch]


def _name(source: ImageSource) -> str | None:
    if isinstance(source, str | Path):
        return str(source)
    return getattr(source, "filename", None) or None
