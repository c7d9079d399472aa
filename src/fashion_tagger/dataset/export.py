"""`dataset export`: a dataset dir as an image-folder tree, a zip of that tree, or an HDF5 file.

The dataset dir may be on object storage (its images are fetched into the local mirror first);
the export itself is written to a local path.

The folder tree is `<split or "all">/<label path joined by "__">/<sha256>.<ext>` (each name
sanitised), the layout of torchvision's ImageFolder and of a Kaggle upload. The HDF5 file holds
`<split>_images` (N, S, S, 3) or (N, S, S) uint8 and `<split>_labels` for train, test (and val),
plus `label_map` ("index,name" strings); labels index the sorted list of sanitised leaf names.

With `layout="vinted-notebook"` the folder tree is the seed notebook's instead (the Vinted
author's): `<name>_<split>/<label path joined by "__">/<item id>.jpeg` for each split, beside a
dated zip of those folders (`<name>_<YYYY-MM-DD>.zip`), where `<name>` is the --out folder's
name; `import folders` reads either back with the splits kept.

Every export is written to a temp path beside the target and renamed at the end, so an
interrupted export never leaves a half-written file or tree at the target.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fashion_tagger import _progress
from fashion_tagger._cpu import usable_cores
from fashion_tagger._io import atomic_path
from fashion_tagger.dataset import images
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError
from fashion_tagger.taxonomy import sanitize_name

FORMATS = ("folders", "zip", "hdf5")
LAYOUTS = ("imagefolder", "vinted-notebook")
"""Folder layouts: torchvision's ImageFolder (the default), or the Vinted notebook's."""
HDF5_DEFAULT_SIZE = 64
CHUNK = 256
"""Images decoded and written per step: memory stays bounded whatever the dataset size."""
STORED_EXTS = frozenset({"jpg", "png", "webp", "gif"})
"""Already-compressed formats: deflating them again costs time and saves nothing."""


@dataclass(frozen=True)
class ExportResult:
    format: str
    path: str
    images: int
    failed: int
    classes: int
    splits: dict[str, int]
    archive: str = ""
    """The dated zip of the vinted-notebook layout."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def class_names(ds: Dataset) -> dict[tuple[str, ...], str]:
    """Each label path's export name: sanitised level names joined by `__`.

    Raises if two different paths sanitise to one name, which would silently merge classes.
    """
    out: dict[tuple[str, ...], str] = {}
    owner: dict[str, tuple[str, ...]] = {}
    for path in sorted({tuple(p) for p in ds.labels}):
        name = "__".join(sanitize_name(n) for n in path) if path else "unlabelled"
        if name in owner and owner[name] != path:
            raise DatasetError(
                f"label paths {' > '.join(owner[name])!r} and {' > '.join(path)!r} both export "
                f"as {name!r}; rename one of them in the source before exporting"
            )
        owner[name] = path
        out[path] = name
    return out


def letterbox(img: Image.Image, size: int, grayscale: bool = False) -> Image.Image:
    """Fit the image in `size` x `size` (aspect kept) and pad to a square on white."""
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    mode = "L" if grayscale else "RGB"
    canvas = Image.new(mode, (size, size), 255 if grayscale else (255, 255, 255))
    img = img.convert(mode)
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def _render(path: Path, size: int | None, grayscale: bool) -> tuple[bytes, str]:
    """An image's exported bytes and extension: the stored file as is, or resized to JPEG."""
    if size is None and not grayscale:
        return path.read_bytes(), path.suffix.lstrip(".")
    img = images.decode(path, size=size)
    img = letterbox(img, size, grayscale) if size else img.convert("L")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), "jpg"


def _pixels(path: Path, size: int, grayscale: bool) -> np.ndarray:
    return np.asarray(letterbox(images.decode(path, size=size), size, grayscale), dtype=np.uint8)


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _safe(fn, *args) -> Any:
    """Run one image's work; a file that no longer decodes is counted, not fatal."""
    try:
        return fn(*args)
    except (images.ImageError, OSError):
        return None


def _selected(ds: Dataset, split: str | None) -> list[tuple[int, str]]:
    """(row, top folder) of every exported row: one split's rows, or all rows by their split."""
    splits = ds.table.column("split").to_pylist()
    if split is not None:
        rows = [(i, split) for i, s in enumerate(splits) if s == split]
        if not rows:
            have = sorted({s or "none" for s in splits})
            raise DatasetError(f"split {split!r} has no rows; this dataset has {have}")
        return rows
    return [(i, s or "all") for i, s in enumerate(splits)]


def _export_tree(
    ds: Dataset,
    rows: list[tuple[int, str]],
    names: dict[tuple[str, ...], str],
    write: Callable[[str, bytes, Path], None],
    size: int | None,
    grayscale: bool,
    workers: int,
    bar: _progress.Bar,
) -> int:
    labels = ds.labels
    shas = ds.table.column("sha256").to_pylist()
    image_paths = ds.table.column("image").to_pylist()
    failed = 0
    with ThreadPoolExecutor(workers) as pool:
        for chunk in _chunks(rows, CHUNK):
            paths = [ds.root / image_paths[i] for i, _ in chunk]
            rendered = pool.map(lambda p: _safe(_render, p, size, grayscale), paths)
            for (i, top), path, out in zip(chunk, paths, rendered, strict=True):
                bar.advance()
                if out is None:
                    failed += 1
                    continue
                data, ext = out
                write(f"{top}/{names[tuple(labels[i])]}/{shas[i]}.{ext}", data, path)
    return failed


def _to_folders(ds, rows, names, out: Path, size, grayscale, workers, bar) -> int:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    raw = size is None and not grayscale

    def write(arcname: str, data: bytes, source: Path) -> None:
        target = tmp / arcname
        if target.exists():  # the same photo twice in one class folder
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if raw:
            try:
                os.link(source, target)
                return
            except OSError:
                pass
        target.write_bytes(data)

    try:
        failed = _export_tree(ds, rows, names, write, size, grayscale, workers, bar)
        tmp.chmod(0o755)  # mkdtemp makes it private; an export is meant to be shared
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return failed


def _to_zip(ds, rows, names, out: Path, size, grayscale, workers, bar) -> int:
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        seen: set[str] = set()

        def write(arcname: str, data: bytes, source: Path) -> None:
            if arcname in seen:
                return
            seen.add(arcname)
            ext = arcname.rsplit(".", 1)[-1].lower()
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if ext in STORED_EXTS else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)

        return _export_tree(ds, rows, names, write, size, grayscale, workers, bar)


def notebook_file_name(item_id: str, taken: set[str]) -> str:
    """`<item id>.jpeg`, the id made file-safe; a second photo of the item gets `__2`..."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._") or "item"
    name, k = f"{safe}.jpeg", 1
    while name in taken:
        k += 1
        name = f"{safe}__{k}.jpeg"
    taken.add(name)
    return name


def _jpeg(path: Path, size: int | None, grayscale: bool) -> bytes:
    """The image as JPEG bytes: a stored JPEG as it is, anything else re-encoded."""
    if size is None and not grayscale and path.suffix.lower() in (".jpg", ".jpeg"):
        return path.read_bytes()
    img = images.decode(path, size=size)
    img = letterbox(img, size, grayscale) if size else img.convert("L" if grayscale else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _to_notebook(ds, rows, names, out: Path, size, grayscale, workers, bar) -> tuple[int, Path]:
    """The Vinted notebook's layout: `<name>_<split>/<class>/<item id>.jpeg`, and its dated zip."""
    name = sanitize_name(out.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    labels, ids = ds.labels, ds.table.column("item_id").to_pylist()
    image_paths = ds.table.column("image").to_pylist()
    taken: dict[str, set[str]] = {}
    archive = f"{name}_{datetime.date.today().isoformat()}.zip"
    failed = 0
    try:
        with (
            ThreadPoolExecutor(workers) as pool,
            zipfile.ZipFile(tmp / archive, "w", allowZip64=True) as zf,
        ):
            for chunk in _chunks(rows, CHUNK):
                paths = [ds.root / image_paths[i] for i, _ in chunk]
                datas = pool.map(lambda p: _safe(_jpeg, p, size, grayscale), paths)
                for (i, split), data in zip(chunk, datas, strict=True):
                    bar.advance()
                    if data is None:
                        failed += 1
                        continue
                    folder = f"{name}_{split}/{names[tuple(labels[i])]}"
                    arcname = (
                        f"{folder}/{notebook_file_name(ids[i], taken.setdefault(folder, set()))}"
                    )
                    (tmp / folder).mkdir(parents=True, exist_ok=True)
                    (tmp / arcname).write_bytes(data)
                    info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, data)  # stored: JPEGs do not deflate
        (tmp / archive).chmod(0o644)
        tmp.chmod(0o755)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return failed, out / archive


def _to_hdf5(ds, rows, names, out: Path, size: int, grayscale, workers, bar) -> int:
    import h5py

    leaves = sorted(set(names.values()))
    index = {name: k for k, name in enumerate(leaves)}
    labels = ds.labels
    image_paths = ds.table.column("image").to_pylist()
    by_split: dict[str, list[int]] = {}
    for i, top in rows:
        by_split.setdefault(top, []).append(i)
    shape = (size, size) if grayscale else (size, size, 3)
    failed = 0
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f, ThreadPoolExecutor(workers) as pool:
        for split in sorted(by_split, key=lambda s: ("train", "val", "test").index(s)):
            split_rows = by_split[split]
            n = len(split_rows)
            imgs = f.create_dataset(
                f"{split}_images",
                shape=(n, *shape),
                maxshape=(None, *shape),
                dtype="uint8",
                chunks=(min(64, n), *shape),
                compression="gzip",
            )
            labs = f.create_dataset(f"{split}_labels", shape=(n,), maxshape=(None,), dtype="int64")
            at = 0
            for chunk in _chunks(split_rows, CHUNK):
                arrays = list(
                    pool.map(
                        lambda i: _safe(_pixels, ds.root / image_paths[i], size, grayscale), chunk
                    )
                )
                good = [(i, a) for i, a in zip(chunk, arrays, strict=True) if a is not None]
                failed += len(chunk) - len(good)
                bar.advance(len(chunk))
                if good:
                    imgs[at : at + len(good)] = np.stack([a for _, a in good])
                    labs[at : at + len(good)] = [index[names[tuple(labels[i])]] for i, _ in good]
                    at += len(good)
            imgs.resize(at, axis=0)
            labs.resize(at, axis=0)
        f.create_dataset(
            "label_map",
            data=np.array([f"{k},{name}" for k, name in enumerate(leaves)], dtype=object),
            dtype=h5py.string_dtype(),
        )
        f.attrs["size"] = size
        f.attrs["grayscale"] = grayscale
        f.attrs["name"] = ds.name
        if ds.level_names:  # read back by `import hdf5` as the level names
            f.attrs["levels"] = np.array(list(ds.level_names), dtype=h5py.string_dtype())
    return failed


def export(
    ds: Dataset,
    fmt: str,
    out: str | Path,
    size: int | None = None,
    grayscale: bool = False,
    split: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    layout: str = "imagefolder",
) -> ExportResult:
    """Write the dataset (or one split) to `out` as `folders`, `zip` or `hdf5`.

    Args:
        layout: for `folders`, `imagefolder` or `vinted-notebook` (see the module docstring).
        size: fit images in `size` x `size`, padded square on white, as JPEG (hdf5: default 64).
        grayscale: one channel instead of three.
        split: export only this split (its rows go under the split's folder / datasets).
        workers: decoding threads (default: all cores).
    """
    if fmt not in FORMATS:
        every = ", ".join((*FORMATS, "webdataset"))  # webdataset's writer is its own module
        raise DatasetError(f"--format {fmt!r} is unknown; choose one of {every}")
    if size is not None and not 8 <= size <= 4096:
        raise DatasetError(f"--size {size} must be between 8 and 4096 pixels, e.g. --size 224")
    if layout not in LAYOUTS:
        raise DatasetError(f"--layout {layout!r} is unknown; choose one of {', '.join(LAYOUTS)}")
    if layout != "imagefolder" and fmt != "folders":
        raise DatasetError(f"--layout {layout} goes with --format folders, not {fmt}")
    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists; choose another --out or delete it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = _selected(ds, split)
    if layout == "vinted-notebook" and any(top == "all" for _, top in rows):
        raise DatasetError(
            "the vinted-notebook layout needs a split per image and some rows have none; run "
            f"`fashion-tagger dataset split {ds.url} --val 0.2` first, or export one --split"
        )
    if fmt == "hdf5":
        size = size or HDF5_DEFAULT_SIZE
        tops = {top for _, top in rows}
        if "all" in tops:
            raise DatasetError(
                "hdf5 needs a split per image and some rows have none; run "
                f"`fashion-tagger dataset split {ds.url} --val 0.1 --test 0.2` first, "
                "or export one split with --split"
            )
        if split is None and not {"train", "test"} <= tops:
            raise DatasetError(
                f"hdf5 needs train and test images but the splits are {sorted(tops)}; run "
                f"`fashion-tagger dataset split {ds.url} --val 0.1 --test 0.2 --force` first"
            )
    names = class_names(ds)
    workers = workers or usable_cores()
    ds.with_table(ds.table.take([i for i, _ in rows])).local_images(progress=progress)
    writer = {"folders": _to_folders, "zip": _to_zip, "hdf5": _to_hdf5}[fmt]
    archive = ""
    with _progress.bar(f"export {fmt}", total=len(rows), enabled=progress) as bar:
        if layout == "vinted-notebook":
            failed, zipped = _to_notebook(ds, rows, names, out, size, grayscale, workers, bar)
            archive = str(zipped)
        else:
            failed = writer(ds, rows, names, out, size, grayscale, workers, bar)
    if out.is_file():
        out.chmod(0o644)  # temp files are created private; an export is meant to be shared
    labels = ds.labels
    counts: dict[str, int] = {}
    for _, top in rows:
        counts[top] = counts.get(top, 0) + 1
    return ExportResult(
        format=fmt,
        path=str(out),
        images=len(rows) - failed,
        failed=failed,
        classes=len({names[tuple(labels[i])] for i, _ in rows}),
        splits=dict(sorted(counts.items())),
        archive=archive,
    )
