"""Import UT-Zappos50K: `meta-data.csv` + `image-path.mat` + the images.

`image-path.mat` holds a cell array `imagepath` of paths relative to the image folder
(`Shoes/Sneakers and Athletic Shoes/Nike/7716996.288224.jpg`), in the order of the CSV's rows.
Labels are Category > SubCategory, Gender becomes the `gender=` attribute, the other columns
(HeelHeight, Insole, Closure, Material, ToeStyle) go to `meta`; the item id is the CID.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fashion_tagger.dataset.ingest import ImportResult, Record, fingerprint, ingest, is_safe_relpath
from fashion_tagger.errors import DatasetError

META = "meta-data.csv"
PATHS = "image-path.mat"
LEVELS = ["Category", "SubCategory"]
IMAGE_DIRS = ("images", "ut-zap50k-images", "ut-zap50k-images-square", ".")


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


def _image_root(src: Path, paths: list[str]) -> Path:
    sample = next((p for p in paths if p and is_safe_relpath(p)), None)
    for name in IMAGE_DIRS:
        root = src / name
        if root.is_dir() and (sample is None or (root / sample).is_file()):
            return root
    return src / "images" if (src / "images").is_dir() else src


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
        elif not (root / rel).is_file():
            rec.error, rec.detail = "missing_image", f"{rel} is not under {root}"
        else:
            rec.load = (root / rel).read_bytes
        seen.add(rel)
        yield rec


def import_zappos(
    src: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> ImportResult:
    """Import UT-Zappos50K (the folder holding meta-data.csv and image-path.mat) into `out`.

    Example:
        >>> import_zappos("downloads/ut-zap50k", "data/zappos")
    """
    src = Path(src)
    if not (src / META).is_file() or not (src / PATHS).is_file():
        raise DatasetError(f"{src} must hold {META} and {PATHS} (the UT-Zappos50K metadata)")
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
