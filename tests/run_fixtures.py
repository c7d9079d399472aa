"""Shared test fixtures for the run dir contract: a learnable synthetic dataset and a tiny run.

Engineers of evaluation, export and serving import these, so they are plain functions (no pytest
fixtures) and fast: `make_tiny_run` trains for a couple of seconds on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fashion_tagger.dataset import images, manifest, store
from fashion_tagger.dataset.core import Dataset

LEVELS = ["shape", "colour"]
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}
PATHS = [
    ("round", "red"),
    ("round", "blue"),
    ("square", "red"),
    ("square", "green"),
    ("square", "blue"),
]
RAGGED_PATH = ("triangle",)
"""A path of depth 1 (no colour level), added with `ragged=True` to exercise masked levels."""


def draw_item(
    path: tuple[str, ...], big: bool, striped: bool, rng: np.random.Generator, size: int = 32
) -> Image.Image:
    """A shape on a grey noisy background: shape = level 0, colour = level 1, size and stripes =
    attributes; all learnable from the pixels."""
    bg = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(img)
    r = size * (0.38 if big else 0.22)
    cx, cy = size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3)
    colour = COLOURS[path[1]] if len(path) > 1 else (240, 200, 40)
    box = (cx - r, cy - r, cx + r, cy + r)
    if path[0] == "round":
        d.ellipse(box, fill=colour)
    elif path[0] == "square":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    if striped:
        for y in range(2, size, 6):
            d.line([(0, y), (size, y)], fill=(255, 255, 255), width=1)
    return img


def make_synthetic_dataset(root: Path, n: int = 240, seed: int = 0, ragged: bool = False) -> Path:
    """A dataset dir of `n` generated 32x32 images, split about 60/20/20 train/val/test.

    Taxonomy `shape > colour` (5 leaves; with `ragged`, also a depth-1 `triangle`), attributes
    `size=big|small` (every image) and `pattern=striped` (a third of them; the others have no
    `pattern` value at all).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    paths = [*PATHS, RAGGED_PATH] if ragged else PATHS
    rows = []
    for i in range(n):
        path = paths[i % len(paths)]
        big, striped = bool(rng.integers(2)), rng.random() < 0.33
        data = images.encode_png(draw_item(path, big, striped, rng))
        info = images.probe(data)
        rel = store.put(root, info.sha256, info.ext, data)
        attrs = [f"size={'big' if big else 'small'}"] + (["pattern=striped"] if striped else [])
        u = rng.random()
        rows.append(
            {
                "image": rel,
                "sha256": info.sha256,
                "item_id": f"item{i}",
                "labels": list(path),
                "attributes": attrs,
                "split": "train" if u < 0.6 else ("val" if u < 0.8 else "test"),
                "source": "synthetic",
                "width": info.width,
                "height": info.height,
            }
        )
    Dataset.create(
        root,
        manifest.rows_to_table(rows),
        {"name": root.name, "levels": LEVELS, "source": "synthetic"},
    )
    return root


def make_tiny_run(tmp_dir: Path) -> tuple[Path, Path]:
    """(run_dir, dataset_dir): a `simple-cnn` + unified head trained a few seconds on the
    synthetic data, clearly better than chance, written with the real `train`."""
    from fashion_tagger.evaluation.curves import draw_curves
    from fashion_tagger.training.config import DataConfig, ModelConfig, TrainConfig
    from fashion_tagger.training.train import train

    tmp_dir = Path(tmp_dir)
    dataset_dir = make_synthetic_dataset(tmp_dir / "dataset", n=240, seed=0)
    config = TrainConfig(
        data=DataConfig(image_size=(32, 32), workers=0),
        model=ModelConfig(backbone="simple-cnn", head="unified", hidden=64),
        epochs=8,
        batch_size=32,
        lr=3e-3,
        seed=0,
        progress=False,
    )
    with one_thread():  # tiny batches: threads only add overhead on a shared machine
        run = train(dataset_dir, tmp_dir / "run", config)
    draw_curves(run)  # as the CLI does after training
    return run.path, dataset_dir


@functools.cache
def shared_tiny_run() -> tuple[Path, Path]:
    """One `make_tiny_run` per test process, for tests that only read it (copy it to change it)."""
    return make_tiny_run(Path(tempfile.mkdtemp(prefix="tiny-run-")))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models train faster without threading overhead."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
