"""Import UT-Zappos50K: `meta-data.csv` + `image-path.mat` + the images.

`image-path.mat` holds a cell array `imagepath` of paths relative to the image folder
(`Shoes/Sneakers and Athletic Shoes/Nike/7716996.288224.jpg`), in the order of the CSV's rows.
Labels are Category > SubCategory, Gender becomes the `gender=` attribute, the other columns
(HeelHeight, Insole, Closure, Material, ToeStyle) go to `meta`; the item id is the CID.

Where the files are: `src` is the folder holding the metadata, or the folder above it in the
authors' download layout, where the two zips unpack side by side:

    zappos/ut-zap50k-data/{meta-data.csv, image-path.mat}
    zappos/ut-zap50k-images-square/Shoes/...      (or ut-zap50k-images/ for the full size)

The images are looked for in `images/`, `ut-zap50k-images/`, `ut-zap50k-images-square/` or the
metadata folder itself, and then beside the metadata folder; the first that holds the listed
paths wins.

Folders whose names end in a period (brands such as `L.A.M.B.`) do not survive every unzip or
file system: they are found on disk as `L.A.M.B%2E`, and some copies of the metadata list them
that way while the disk has the period. A listed path that is not on disk is tried with its
trailing periods written as `%2E`, and with `%2E` read back as periods (the `%2E` fix).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fashion_tagger.dataset.ingest import ImportResult, Record, fingerprint, ingest, is_safe_relpath
from fashion_tagger.errors import DatasetError

META = "meta-data.csv"
PATHS = "image-path.mat"
LEVELS = ["Category", "SubCategory"]
IMAGE_DIRS = ("images", "ut-zap50k-images", "ut-zap50k-images-square", ".")
DATA_DIR = "ut-zap50k-data"
"""The metadata folder of the authors' download, beside the image folders."""
SAMPLES = 20
"""Listed paths checked when choosing the image folder."""
_TRAILING_DOTS = re.compile(r"\.+$")
_TRAILING_ESCAPES = re.compile(r"(?:%2[eE])+$")


def read_image_paths(path: Path) -> list[str]:
    """The `imagepath` cell array of a MATLAB file as a list of POSIX paths ("" where empty)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=False)
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise DatasetError(
            f"{path} is a MATLAB v7.3 file; re-save it with -v7 (scipy reads <= v7)"
        ) from exc
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{path} is not a readable MATLAB file: {exc}") from exc
    if "imagepath" not in mat:
        raise DatasetError(
            f"{path} has no variable 'imagepath' (it has {sorted(k for k in mat if not k.startswith('__'))})"
        )
    out = []
    for cell in np.asarray(mat["imagepath"], dtype=object).ravel():
        value = np.asarray(cell).ravel()
        out.append(str(value[0]).replace("\\", "/").strip() if value.size else "")
    return out


def path_variants(rel: str) -> list[str]:
    """`rel` as listed, then with each folder's trailing periods as `%2E`, then with each
    folder's trailing `%2E` as periods (the spellings one folder takes on different disks).
    Only safe relative paths are returned: `%2E%2E` must not turn into `..`."""
    *folders, name = rel.split("/")
    escaped = [_TRAILING_DOTS.sub(lambda m: "%2E" * len(m.group()), f) for f in folders]
    unescaped = [_TRAILING_ESCAPES.sub(lambda m: "." * (len(m.group()) // 3), f) for f in folders]
    out = [rel]
    for parts in (escaped, unescaped):
        candidate = "/".join([*parts, name])
        if candidate not in out and is_safe_relpath(candidate):
            out.append(candidate)
    return out


def find_image(root: Path, rel: str) -> Path | None:
    """The file under `root` that the listed path `rel` names, in any of its spellings."""
    for candidate in path_variants(rel):
        if (root / candidate).is_file():
            return root / candidate
    return None


def _meta_dir(src: Path) -> Path:
    """The folder holding the metadata: `src`, or its `ut-zap50k-data/` (the authors' layout)."""
    for folder in (src, src / DATA_DIR):
        if (folder / META).is_file() and (folder / PATHS).is_file():
            return folder
    raise DatasetError(
        f"{src} must hold {META} and {PATHS} (the UT-Zappos50K metadata), or a {DATA_DIR}/ "
        "folder with them beside the image folder"
    )


def _image_root(meta_dir: Path, paths: list[str]) -> Path:
    """The image folder: the first candidate holding the most of a sample of the listed paths
    (the metadata folder's own subfolders first, then its neighbours)."""
    sample = [p for p in paths if p and is_safe_relpath(p)][:SAMPLES]
    candidates = [meta_dir / name for name in IMAGE_DIRS]
    candidates += [meta_dir.parent / name for name in IMAGE_DIRS[:-1]]
    best, hits = None, 0
    for root in candidates:
        if not root.is_dir():
            continue
        if not sample:
            return root
        found = sum(find_image(root, p) is not None for p in sample)
        if found > hits:
            best, hits = root, found
    if best is not None:
        return best
    return meta_dir / "images" if (meta_dir / "images").is_dir() else meta_dir


def _records(rows: list[dict[str, str]], paths: list[str], root: Path) -> Iterator[Record]:
    seen: set[str] = set()
    for i, (row, rel) in enumerate(zip(rows, paths, strict=True)):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        labels = [row.get(c, "") for c in LEVELS]
        while labels and not labels[-1]:
            labels.pop()
        gender = row.get("Gender", "")
        meta = {k: v for k, v in row.items() if k not in {"CID", *LEVELS, "Gender"} and v}
        rec = Record(key=rel if rel and rel not in seen else f"row:{i}", labels=labels,
                     item_id=row.get("CID") or f"row-{i}",
                     attributes=[f"gender={gender}"] if gender else [],
                     source_url=rel, meta=meta)  # fmt: skip
        if not rel:
            rec.error, rec.detail = "missing_image", f"row {i + 1} has no image path"
        elif rel in seen:
            rec.error, rec.detail = "duplicate_image", rel
        elif not is_safe_relpath(rel):
            rec.error, rec.detail = "path_outside_root", rel
        elif not labels or "" in labels:
            rec.error, rec.detail = "no_label", f"row {i + 1}: Category or SubCategory is empty"
        elif (found := find_image(root, rel)) is None:
            rec.error, rec.detail = "missing_image", f"{rel} is not under {root}"
        else:
            rec.load = found.read_bytes
        seen.add(rel)
        yield rec


def import_zappos(
    src: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> ImportResult:
    """Import UT-Zappos50K into `out`: `src` holds meta-data.csv and image-path.mat, or the
    authors' side-by-side `ut-zap50k-data/` and `ut-zap50k-images-square/` folders.

    Example:
        >>> import_zappos("downloads/zappos", "data/zappos")
    """
    src = _meta_dir(Path(src))
    with open(src / META, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if rows and (missing := [c for c in ["CID", *LEVELS] if c not in rows[0]]):
        raise DatasetError(f"{src / META} lacks the columns {missing}")
    paths = read_image_paths(src / PATHS)
    if len(paths) != len(rows):
        raise DatasetError(
            f"{PATHS} lists {len(paths)} images but {META} has {len(rows)} rows; they must match"
        )
    root = _image_root(src, paths)
    return ingest(
        _records(rows, paths, root),
        out,
        kind="zappos",
        fp=fingerprint("zappos", src=str(src.resolve())),
        name="ut-zappos50k",
        levels=LEVELS,
        source=str(src),
        total=len(rows),
        workers=workers,
        progress=progress,
    )
