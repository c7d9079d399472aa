"""Training data: images decoded once at the training size, targets, batches, augmentation.

CPU training is data-bound if every step decodes JPEGs, so each split is decoded once (in
parallel, with `Image.draft`) into one uint8 array (N, C, H, W) in an uncompressed .npy cache
on disk, written once (temp file + rename) and memory-mapped read-only: the page cache holds the
pixels, not the process, so training memory does not grow with the dataset, and processes that
map one cache share its pages. A batch is a fancy index into that map. Augmentation runs on the batch tensor
(flip, brightness/contrast, shift-scale-rotate, blur, noise), so it costs a few vectorised ops.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from fashion_tagger import _progress
from fashion_tagger._io import atomic_path
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError
from fashion_tagger.model.spec import ModelSpec
from fashion_tagger.taxonomy import Taxonomy

CHUNK = 256


@dataclass
class SplitArrays:
    """One split: pixels (N, C, H, W) uint8, level targets (N, L) int64 (-1 = masked),
    attribute targets (N, A) float32.

    `images` is a read-only memory map of the on-disk cache: the page cache holds the pixels,
    shared by every process that maps the file, and a batch reads only its own rows."""

    images: np.ndarray
    levels: np.ndarray
    attributes: np.ndarray

    def __len__(self) -> int:
        return len(self.levels)


def _decode_chunk(root: str, rels: list[str], spec: ModelSpec, out: str, start: int) -> list[int]:
    """Worker: decode images at the model size straight into rows `start...` of the .npy at
    `out` (memory-mapped, so no pixels travel back through a pipe); returns failed positions."""
    from fashion_tagger.model.preprocess import decode_for_model, to_uint8

    pixels = np.load(out, mmap_mode="r+")
    bad = []
    try:
        for i, rel in enumerate(rels):
            try:
                pixels[start + i] = to_uint8(decode_for_model(Path(root) / rel, spec), spec)
            except Exception:  # a broken file must not stop training; reported by count
                bad.append(i)
        pixels.flush()
    finally:
        del pixels
    return bad


def decode_images(
    root: Path,
    rels: list[str],
    spec: ModelSpec,
    workers: int,
    progress: bool,
    label: str,
    out: Path | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image into one uint8 .npy file at `out` (a private temp file, unlinked
    once mapped, when None); returns (the file memory-mapped read-only, ok mask).

    Workers write their rows into the file themselves, so the process's own memory does not
    grow with the number of images: the pixels are file pages the kernel may write back."""
    h, w = spec.input_size
    private = out is None
    if private:
        fd, name = tempfile.mkstemp(prefix=f"decode-{label}-", suffix=".npy")
        os.close(fd)
        out = Path(name)
    try:
        np.lib.format.open_memmap(
            out, mode="w+", dtype=np.uint8, shape=(len(rels), spec.channels, h, w)
        ).flush()
        ok = np.ones(len(rels), dtype=bool)
        chunks = [(i, rels[i : i + CHUNK]) for i in range(0, len(rels), CHUNK)]
        with _progress.bar(f"decoding {label} images", total=len(rels), enabled=progress) as bar:

            def take(start: int, n: int, bad: list[int]) -> None:
                for b in bad:
                    ok[start + b] = False
                bar.advance(n)

            if workers <= 1 or len(chunks) <= 1:
                for start, part in chunks:
                    take(start, len(part), _decode_chunk(str(root), part, spec, str(out), start))
            else:
                # fork: no re-import of the caller's __main__; the workers touch only PIL and numpy
                ctx = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
                with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                    futures = [
                        (start, len(part), pool.submit(
                            _decode_chunk, str(root), part, spec, str(out), start
                        ))
                        for start, part in chunks
                    ]  # fmt: skip
                    for start, n, fut in futures:
                        take(start, n, fut.result())
        return np.load(out, mmap_mode="r"), ok
    finally:
        if private:  # the mapping keeps the data alive; the name goes now
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)


def _compact(pixels: np.ndarray, ok: np.ndarray, out: Path) -> None:
    """The rows of `pixels` where `ok`, written to the .npy at `out` a chunk at a time."""
    keep = np.flatnonzero(ok)
    dst = np.lib.format.open_memmap(
        out, mode="w+", dtype=np.uint8, shape=(len(keep), *pixels.shape[1:])
    )
    for i in range(0, len(keep), CHUNK):
        dst[i : i + CHUNK] = pixels[keep[i : i + CHUNK]]
    dst.flush()
    del dst


def cache_paths(split: str, rels: list[str], spec: ModelSpec, cache_dir: Path) -> tuple[Path, Path]:
    """(pixels .npy, ok-mask .npy) of a split's decoded cache, keyed by its images and the
    input spec; the pixel file holds only the readable images, the mask says which those are."""
    h, w = spec.input_size
    # bilinear adds nothing to the key, so caches written before the filter was a choice stay valid
    pre = f"{h}x{w}x{spec.channels}-{spec.resize}"
    pre += "" if spec.interpolation == "bilinear" else f"-{spec.interpolation}"
    key = hashlib.sha256("\n".join([pre, *rels]).encode()).hexdigest()[:16]
    stem = f"{split}-{h}x{w}x{spec.channels}-{key}"
    return Path(cache_dir) / f"{stem}.npy", Path(cache_dir) / f"{stem}.ok.npy"


def _read_cache(cache: Path, ok_file: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cache memory-mapped and its mask, or None when it is absent or does not fit."""
    if not (cache.is_file() and ok_file.is_file()):
        return None
    try:
        ok = np.load(ok_file)
        pixels = np.load(cache, mmap_mode="r")
    except (OSError, ValueError):
        return None  # damaged: decoded again and replaced
    if ok.shape != (n,) or ok.dtype != bool or len(pixels) != int(ok.sum()):
        return None
    return pixels, ok


def _compacted(pixels: np.ndarray, ok: np.ndarray, beside: Path | None) -> np.ndarray:
    """`pixels[ok]` as a new read-only map (a temp file beside `beside`, or in the system temp
    dir, unlinked once mapped): never a copy in the process's memory."""
    fd, name = tempfile.mkstemp(dir=beside, prefix="compact-", suffix=".npy")
    os.close(fd)
    try:
        _compact(pixels, ok, Path(name))
        return np.load(name, mmap_mode="r")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _write_cache(
    root: Path, rels: list[str], spec: ModelSpec, paths: tuple[Path, Path], workers: int,
    progress: bool, split: str,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Decode into a temp file beside the cache and rename it into place, the mask first (the
    pixel file, renamed last, vouches for both); unreadable rows are compacted out."""
    cache, ok_file = paths
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        pixels, ok = decode_images(root, rels, spec, workers, progress, split, out=tmp)
        if not ok.all():
            fd, dense = tempfile.mkstemp(dir=cache.parent, prefix="compact-", suffix=".npy")
            os.close(fd)
            try:
                _compact(pixels, ok, Path(dense))
                os.replace(dense, tmp)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dense)
        del pixels
        with atomic_path(ok_file) as tmp_ok, open(tmp_ok, "wb") as f:
            np.save(f, ok)
    return np.load(cache, mmap_mode="r"), ok


def encode_targets(
    ds: Dataset, taxonomy: Taxonomy, attribute_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Level indices (N, L) with -1 below each path's depth, and multi-hot attributes (N, A).

    An image with no value of an attribute group counts as a negative for every value of it.
    """
    labels = ds.labels
    levels = np.array([taxonomy.encode(p) for p in labels], dtype=np.int64).reshape(
        len(labels), taxonomy.depth
    )
    col = {name: j for j, name in enumerate(attribute_names)}
    attrs = np.zeros((len(labels), len(attribute_names)), dtype=np.float32)
    for i, values in enumerate(ds.table.column("attributes").to_pylist()):
        for v in values:
            if v in col:
                attrs[i, col[v]] = 1.0
    return levels, attrs


def load_split(
    ds: Dataset,
    split: str,
    spec: ModelSpec,
    cache_dir: Path,
    workers: int,
    progress: bool,
    write_cache: bool = True,
) -> tuple[SplitArrays, int]:
    """A split as arrays, decoded once into an uncompressed .npy cache keyed by its images and
    the input spec, and memory-mapped read-only (never loaded whole); returns the arrays and
    the number of unreadable images dropped.

    `write_cache=False` (ranks other than 0 of a distributed run) reads the cache when it is
    there and otherwise decodes into a private temp file, so only rank 0 ever writes."""
    part = ds.split(split).labelled()
    if len(part) == 0:
        raise DatasetError(
            f"{ds.root} has no labelled {split!r} images; split it first: "
            f"fashion-tagger dataset split {ds.root} --val 0.15 --test 0.15"
        )
    rels = part.table.column("image").to_pylist()
    paths = cache_paths(split, rels, spec, cache_dir)
    found = _read_cache(*paths, len(rels))
    if found is not None:
        pixels, ok = found
    else:
        root = part.local_images(progress=progress)  # fetched first when on object storage
        if write_cache:
            pixels, ok = _write_cache(root, rels, spec, paths, workers, progress, split)
        else:
            pixels, ok = decode_images(root, rels, spec, workers, progress, split)
            if not ok.all():
                pixels = _compacted(pixels, ok, None)
    levels, attrs = encode_targets(part, spec.taxonomy, spec.attribute_names)
    return SplitArrays(pixels, levels[ok], attrs[ok]), int((~ok).sum())


class BatchDataset(torch.utils.data.Dataset):
    """Indexable by one position or by a list of positions (a whole batch at once).

    With a `BatchSampler` as the sampler and `batch_size=None`, the loader hands a list of
    indices to `__getitem__`, so a batch is one numpy fancy index, not `batch_size` calls.
    """

    def __init__(self, images: np.ndarray, levels: np.ndarray, attributes: np.ndarray) -> None:
        self.images, self.levels, self.attributes = images, levels, attributes

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, idx):
        if isinstance(idx, list):
            idx = np.asarray(idx)
        pixels = np.ascontiguousarray(self.images[idx])
        if not pixels.flags.writeable:  # one row of the read-only map: torch wants its own copy
            pixels = pixels.copy()
        return (
            torch.from_numpy(pixels),
            torch.from_numpy(np.ascontiguousarray(self.levels[idx])),
            torch.from_numpy(np.ascontiguousarray(self.attributes[idx])),
        )


EVAL_BATCH_VALUES = 32 * 3 * 224 * 224
"""The most input values in one evaluation batch: 32 images at 224x224 (an activation of the
first stage of a CNN is then a few hundred MB), 392 at 64x64; training batches are as given."""


def eval_batch_size(batch_size: int, item_shape: tuple[int, ...]) -> int:
    """`batch_size`, lowered where its batches would hold more than `EVAL_BATCH_VALUES`
    values: evaluation needs no large batch (no batch statistics are kept), and at 224x224 a
    batch of 128 costs a gigabyte of activations for nothing."""
    per_item = max(1, int(np.prod(item_shape)))
    return max(1, min(batch_size, EVAL_BATCH_VALUES // per_item))


def make_loader(
    ds: BatchDataset, batch_size: int, shuffle: bool, seed: int, distributed: bool
) -> torch.utils.data.DataLoader:
    """Fast whole-batch indexing on one device; a standard per-sample loader under DDP (so
    Lightning can shard it with its DistributedSampler).

    An evaluation loader (`shuffle=False`) holds at most `EVAL_BATCH_VALUES` input values a
    batch (see `eval_batch_size`): its activations, not the data, are then what a large input
    size costs in memory."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

    if not shuffle:
        batch_size = eval_batch_size(batch_size, ds.images.shape[1:])
    if distributed:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle)
    gen = torch.Generator().manual_seed(seed)
    base = RandomSampler(ds, generator=gen) if shuffle else SequentialSampler(ds)
    drop = shuffle and len(ds) > batch_size
    return DataLoader(ds, batch_size=None, sampler=BatchSampler(base, batch_size, drop_last=drop))


def class_weights(levels: np.ndarray, sizes: tuple[int, ...], mode: str) -> list[torch.Tensor]:
    """Per-level loss weights from train counts: inverse frequency (or its sqrt), mean 1 over the
    classes seen in training; classes never seen get weight 0."""
    out = []
    for lvl, n in enumerate(sizes):
        y = levels[:, lvl]
        counts = np.bincount(y[y >= 0], minlength=n).astype(np.float64)
        if mode == "none":
            w = np.ones(n)
        else:
            w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
            if mode == "sqrt":
                w = np.sqrt(w)
            seen = counts > 0
            if seen.any():
                w = w / w[seen].mean()
        out.append(torch.tensor(w, dtype=torch.float32))
    return out


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flip, brightness/contrast, shift-scale-rotate, blur and noise of a float batch in
    [0, 1] (N, C, H, W); one draw per image, all vectorised."""
    n, c, _h, _w = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(dev)

    # horizontal flip
    flip = rand(n) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    # brightness / contrast
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + (rand(n, 1, 1, 1) - 0.5) * 0.4
    bright = (rand(n, 1, 1, 1) - 0.5) * 0.2
    x = (x - mean) * contrast + mean + bright
    # shift-scale-rotate (fill with white, the catalog background)
    angle = (rand(n) - 0.5) * (2 * np.pi * 15 / 360)
    scale = 1 + (rand(n) - 0.5) * 0.2
    tx, ty = (rand(n) - 0.5) * 0.2, (rand(n) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1
    # blur a quarter of the images
    blur = rand(n) < 0.25
    if bool(blur.any()):
        k = torch.ones(c, 1, 3, 3, device=dev) / 9
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)
        x = torch.where(blur.view(n, 1, 1, 1), blurred, x)
    # gaussian noise on a quarter of the images
    noisy = (rand(n) < 0.25).view(n, 1, 1, 1).float()
    x = x + noisy * torch.randn(x.shape, generator=generator).to(dev) * 0.03
    return x.clamp(0, 1)


def augment_light(
    x: torch.Tensor, generator: torch.Generator | None = None, pixels: int = 2
) -> torch.Tensor:
    """Random horizontal flip and a shift of up to `pixels` in each direction (edges
    replicated) of a float batch (N, C, H, W); one draw per image, a few milliseconds a batch.

    The cheap augmentation of fast small-image training recipes: it fights overfitting without
    the cost of resampling, so short budgets lose no epochs to it.
    """
    n, c, h, w = x.shape
    dev = x.device
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    if pixels <= 0:
        return x
    padded = F.pad(x, (pixels,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n), generator=generator).to(dev)
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + torch.arange(w, device=dev)
    n_idx = torch.arange(n, device=dev).view(n, 1, 1, 1)
    c_idx = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[n_idx, c_idx, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


AUGMENTATIONS = {"light": augment_light, "full": augment}
"""`DataConfig.augment` mode -> function of (batch, generator)."""
