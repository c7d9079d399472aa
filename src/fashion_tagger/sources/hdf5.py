"""Import an HDF5 file in the shared array layout (the one `dataset export hdf5` writes).

    train_images, train_labels, test_images, test_labels, label_map [, val_images, val_labels]

Images are (N, H, W) greyscale or (N, H, W, C) uint8 (C = 1, 3 or 4), labels integers, and
`label_map` a 1-D array of "index,name" strings whose name may be a path joined by `__`
(`Apparel__Topwear__Shirts`), split here into levels. Images are read a chunk at a time, so memory
stays bounded whatever the file's size; each is stored as a lossless PNG.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from fashion_tagger.dataset.images import encode_png
from fashion_tagger.dataset.ingest import ImportResult, Record, fingerprint, ingest
from fashion_tagger.errors import DatasetError

SPLITS = {"train": "train", "val": "val", "test": "test"}
CHUNK = 1024
LEVEL_SEPARATOR = "__"
MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def parse_label_map(values: list) -> dict[int, list[str]]:
    """`["0,Tops__Shirt", ...]` -> `{0: ["Tops", "Shirt"]}`."""
    out: dict[int, list[str]] = {}
    for raw in values:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        index, sep, name = text.partition(",")
        try:
            i = int(index)
        except ValueError:
            i = -1
        if not sep or i < 0 or not name.strip():
            raise DatasetError(f"label_map entry {text!r} is not 'index,name'")
        out[i] = [p.strip() for p in name.split(LEVEL_SEPARATOR) if p.strip()]
    return out


def _png(pixels: np.ndarray) -> bytes:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    mode = "L" if pixels.ndim == 2 else MODES[pixels.shape[2]]
    return encode_png(Image.fromarray(np.ascontiguousarray(pixels), mode))


def _check(f, split: str) -> tuple:
    images, labels = f[f"{split}_images"], f[f"{split}_labels"]
    shape = images.shape
    if (
        images.dtype != np.uint8
        or len(shape) not in (3, 4)
        or (len(shape) == 4 and shape[3] not in MODES)
    ):
        raise DatasetError(
            f"{split}_images is {images.dtype} {shape}; expected uint8 (N,H,W) or (N,H,W,C), C in 1/3/4"
        )
    if labels.shape != (shape[0],):
        raise DatasetError(f"{split}_labels has shape {labels.shape}, expected ({shape[0]},)")
    return images, labels


def _records(f, label_map: dict[int, list[str]], name: str) -> Iterator[Record]:
    for prefix, split in SPLITS.items():
        if f"{prefix}_images" not in f:
            continue
        images, labels = _check(f, prefix)
        for start in range(0, images.shape[0], CHUNK):
            chunk = images[start : start + CHUNK]
            chunk_labels = labels[start : start + CHUNK]
            for j in range(chunk.shape[0]):
                i = start + j
                label = int(chunk_labels[j])
                rec = Record(key=f"{prefix}/{i}", labels=label_map.get(label, []),
                             item_id=f"{prefix}-{i}", split=split, source_url=f"{name}#{prefix}/{i}",
                             meta={"label_index": label})  # fmt: skip
                if label not in label_map:
                    rec.error, rec.detail = "unknown_label", f"label {label} is not in label_map"
                else:
                    rec.load = lambda px=chunk[j]: _png(px)
                yield rec


def import_hdf5(
    src: str | Path,
    out: str | Path,
    *,
    levels: list[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImportResult:
    """Import an HDF5 file in the shared layout into the dataset dir `out`.

    Args:
        levels: names of the label levels, root first (default: the file's `levels` attribute
            if it has one, else level0, level1...).

    Example:
        >>> import_hdf5("export/products.h5", "data/products-h5")
    """
    import h5py

    src = Path(src)
    if not src.is_file():
        raise DatasetError(f"{src} is not a file; pass an HDF5 file (.h5)")
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise DatasetError(f"{src} is not a readable HDF5 file: {exc}") from exc
    with f:
        missing = [k for k in ("train_images", "train_labels", "label_map") if k not in f]
        if (
            missing
            or ("test_images" in f) != ("test_labels" in f)
            or ("val_images" in f) != ("val_labels" in f)
        ):
            raise DatasetError(
                f"{src} does not follow the layout train_images, train_labels, test_images, "
                f"test_labels, label_map [, val_images, val_labels] (missing: {missing or 'a pair'})"
            )
        label_map = parse_label_map(list(f["label_map"][()]))
        if levels is None and "levels" in f.attrs:
            levels = [v.decode() if isinstance(v, bytes) else str(v) for v in f.attrs["levels"]]
        total = sum(f[f"{p}_labels"].shape[0] for p in SPLITS if f"{p}_labels" in f)
        return ingest(
            _records(f, label_map, src.name),
            out,
            kind="hdf5",
            fp=fingerprint("hdf5", src=str(src.resolve()), levels=levels),
            name=src.stem,
            levels=levels or [],
            source=str(src),
            total=total,
            workers=workers,
            progress=progress,
        )
