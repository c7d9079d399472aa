"""Import a tree of images whose folders are the categories.

    root/[train|validation|val|test/]<level1>/<level2>/.../<image>

Nested folders are category levels; a folder name with `__` is split into levels
(`women__clothes__coats`); a top-level train / validation (or val) / test folder is the split.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

from fashion_tagger._io import read_regular
from fashion_tagger.dataset.images import EXTENSIONS
from fashion_tagger.dataset.ingest import ImportResult, Record, fingerprint, ingest
from fashion_tagger.errors import DatasetError

SPLIT_FOLDERS = {"train": "train", "training": "train", "validation": "val", "valid": "val",
                 "val": "val", "test": "test", "testing": "test"}  # fmt: skip


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f


def folder_records(root: Path) -> Iterator[Record]:
    for path in _walk(root):
        rel = path.relative_to(root)
        parts = list(rel.parts[:-1])
        split = ""
        if parts and parts[0].lower() in SPLIT_FOLDERS:
            split = SPLIT_FOLDERS[parts.pop(0).lower()]
        labels = [name for part in parts for name in part.split("__") if name]
        key = rel.as_posix()
        rec = Record(
            key=key,
            labels=labels,
            item_id=rel.with_suffix("").as_posix(),
            split=split,
            source_url=key,
            meta={"file": rel.name},
        )
        if path.suffix.lower() not in EXTENSIONS:
            rec.error, rec.detail = "unsupported_extension", path.suffix or "(none)"
        elif not labels:
            rec.error, rec.detail = "no_label", "image is not inside a category folder"
        else:
            rec.load = functools.partial(read_regular, path)
        yield rec


def import_folders(
    src: str | Path,
    out: str | Path,
    *,
    levels: list[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImportResult:
    """Import an image folder tree (ImageFolder layout, optionally split) into `out`."""
    root = Path(src)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    total = sum(1 for _ in _walk(root))
    return ingest(
        folder_records(root),
        out,
        kind="folders",
        fp=fingerprint("folders", src=str(root.resolve()), levels=levels),
        name=root.resolve().name,
        levels=levels or [],
        source=str(root),
        total=total,
        workers=workers,
        progress=progress,
    )
