"""Import Fashion-MNIST: the four official IDX files, or Kaggle's CSV layout, or a download.

Each 28x28 greyscale image is stored as a PNG, the official train/test split is kept, and the ten
classes get a parent group so the dataset has two levels ("group", "class"). A later
`dataset split --val F` carves val out of train and leaves the official test split as it is.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from fashion_tagger.dataset.images import encode_png
from fashion_tagger.dataset.ingest import ImportResult, Record, fingerprint, ingest
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources._download import cache_dir as default_cache_dir
from fashion_tagger.sources._download import fetch

LEVELS = ["group", "class"]
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
GROUPS = {"T-shirt/top": "Tops", "Pullover": "Tops", "Shirt": "Tops", "Coat": "Tops",
          "Trouser": "Bottoms", "Dress": "Dresses", "Sandal": "Footwear", "Sneaker": "Footwear",
          "Ankle boot": "Footwear", "Bag": "Bags"}  # fmt: skip

DEFAULT_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
URL_ENV = "FASHION_TAGGER_FASHION_MNIST_URL"
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
"""The MD5 sums Zalando publishes for the official files."""
IDX_SPLITS = {"train": "train", "t10k": "test"}
SIDE = 28


def labels_of(index: int) -> list[str]:
    """The two-level label path of class `index` (0-9)."""
    name = CLASSES[index]
    return [GROUPS[name], name]


def download_fashion_mnist(
    cache_dir: str | Path | None = None,
    base_url: str | None = None,
    *,
    checksums: dict[str, str] | None = None,
    progress: bool = True,
) -> Path:
    """Download the four official IDX files (once: they are cached) and return their folder.

    Args:
        cache_dir: cache root (default $FASHION_TAGGER_CACHE, else ~/.cache/fashion-tagger).
        base_url: where the files are (default $FASHION_TAGGER_FASHION_MNIST_URL, else Zalando's).
        checksums: file name -> MD5 or SHA-256 (default the official ones); a mismatch is an error.
    """
    base = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/") + "/"
    folder = default_cache_dir(cache_dir) / "fashion-mnist"
    sums = CHECKSUMS if checksums is None else checksums
    for name in CHECKSUMS:
        fetch(base + name, folder / name, sums.get(name), progress=progress)
    return folder


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array: (N,) labels or (N, 28, 28) images."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path} is not a readable IDX file: {exc}") from exc
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - start != expected:
        raise DatasetError(
            f"{path} holds {len(data) - start} bytes of data, its header says {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(dims)


def _png(pixels: np.ndarray) -> bytes:
    return encode_png(Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "L"))


def _record(split: str, i: int, label: int, pixels: np.ndarray, origin: str) -> Record:
    rec = Record(key=f"{split}/{i}", labels=[], item_id=f"{split}-{i}", split=split,
                 source_url=f"{origin}#{i}")  # fmt: skip
    if not 0 <= label < len(CLASSES):
        rec.error, rec.detail = "unknown_label", f"label {label} is not 0-9"
    elif pixels.size != SIDE * SIDE:
        rec.error, rec.detail = (
            "malformed_csv_line",
            f"{pixels.size} pixels, expected {SIDE * SIDE}",
        )
    else:
        rec.labels = labels_of(label)
        rec.load = lambda: _png(pixels.reshape(SIDE, SIDE))
    return rec


def _idx_records(folder: Path) -> Iterator[Record]:
    for prefix, split in IDX_SPLITS.items():
        images_path = _find(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
        imgs, labels = read_idx(images_path), read_idx(labels_path)
        if imgs.ndim != 3 or len(imgs) != len(labels):
            raise DatasetError(
                f"{images_path.name} ({imgs.shape}) and {labels_path.name} ({labels.shape}) do not match"
            )
        for i in range(len(labels)):
            yield _record(split, i, int(labels[i]), imgs[i], images_path.name)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(
        f"{folder} lacks {stem}.gz; pass the folder holding the four official IDX files"
    )


def _csv_split(path: Path) -> str:
    name = path.name.lower()
    return "test" if "test" in name else "train" if "train" in name else ""


def _csv_records(files: list[Path]) -> Iterator[Record]:
    for path in files:
        split = _csv_split(path)
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or header[0].strip().lower() != "label":
                raise DatasetError(f"{path} is not in the Kaggle layout (label,pixel1..pixel784)")
            for i, row in enumerate(reader):
                key = f"{path.name}/{i}"  # unique even if two files share a split
                try:
                    label = int(row[0])
                    pixels = np.array(row[1:], dtype=np.int64)
                    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
                        raise ValueError("pixel values outside 0-255")
                except (ValueError, IndexError) as exc:
                    yield Record(key=key, labels=[], item_id="", error="malformed_csv_line",
                                 detail=f"{path.name} row {i + 1}: {exc}")  # fmt: skip
                    continue
                rec = _record(path.stem, i, label, pixels.astype(np.uint8), path.name)
                rec.key, rec.split = key, split
                yield rec


def _layout(src: Path) -> tuple[str, list[Path]]:
    if src.is_file():
        return "csv", [src]
    if not src.is_dir():
        raise DatasetError(f"{src} does not exist; pass the IDX folder or a Kaggle CSV file")
    csvs = sorted(p for p in src.glob("fashion-mnist_*.csv") if _csv_split(p))
    if any(src.glob("*-idx?-ubyte*")):
        return "idx", []
    if csvs:
        return "csv", csvs
    raise DatasetError(
        f"{src} holds neither the four IDX files nor fashion-mnist_train.csv / fashion-mnist_test.csv"
    )


def _count(layout: str, files: list[Path], src: Path) -> int:
    """Number of records, for the progress bar: from the IDX label headers, or CSV lines."""
    if layout == "idx":
        total = 0
        for prefix in IDX_SPLITS:
            path = _find(src, f"{prefix}-labels-idx1-ubyte")
            with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
                total += int.from_bytes(f.read(8)[4:8], "big")
        return total
    n = 0
    for path in files:
        with open(path, "rb") as f:
            n += max(0, sum(1 for _ in f) - 1)
    return n


def import_fashion_mnist(
    src: str | Path | None,
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    base_url: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImportResult:
    """Import Fashion-MNIST from IDX files or Kaggle CSVs; with `src=None`, download it first.

    Example:
        >>> import_fashion_mnist("../shared/datasets/fashion-mnist/fashion-mnist_test-1000.csv", "data/fmnist")
    """
    if src is None:
        src = download_fashion_mnist(cache_dir, base_url, progress=progress)
    src = Path(src)
    layout, files = _layout(src)
    records = _idx_records(src) if layout == "idx" else _csv_records(files)
    return ingest(
        records,
        out,
        kind="fashion-mnist",
        fp=fingerprint("fashion-mnist", src=str(src.resolve())),
        name="fashion-mnist",
        levels=LEVELS,
        source=str(src),
        total=_count(layout, files, src),
        workers=workers,
        progress=progress,
    )
