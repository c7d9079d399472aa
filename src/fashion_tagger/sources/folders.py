"""Import a tree of images whose folders are the categories, from a folder or a zip of one.

    root/[train|validation|val|test/]<level1>/<level2>/.../<image>
    root/<name>_train|<name>_val|<name>_test/<level1>__<level2>/<item id>.jpeg

Nested folders are category levels; a folder name with `__` is split into levels
(`women__clothes__coats`); a top-level train / validation (or val) / test folder is the split,
and so is a top-level `<name>_train` / `<name>_val` / `<name>_test` folder (the Vinted notebook's
layout, as `dataset export --layout vinted-notebook` writes it: the file name is the item id,
with `__2`... for an item's further photos). A zip is read in place: a single folder holding
everything is its root, entries that would leave the root are refused, and oversized entries
are skipped unread.
"""

from __future__ import annotations

import functools
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path, PurePosixPath

from fashion_tagger._io import read_regular
from fashion_tagger.dataset.images import EXTENSIONS
from fashion_tagger.dataset.ingest import ImportResult, Record, fingerprint, ingest, is_safe_relpath
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources._download import MAX_IMAGE_BYTES

SPLIT_FOLDERS = {"train": "train", "training": "train", "validation": "val", "valid": "val",
                 "val": "val", "test": "test", "testing": "test"}  # fmt: skip
_NOTEBOOK_SPLIT = re.compile(r"^.+_(train|training|val|valid|validation|test|testing)$", re.I)

Entry = tuple[str, Callable[[], bytes] | None, str | None, str]
"""(path relative to the root, loader, error, error detail) of one file."""


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f


def _dir_entries(root: Path) -> Iterator[Entry]:
    for path in _walk(root):
        yield path.relative_to(root).as_posix(), functools.partial(read_regular, path), None, ""


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A zip entry's bytes, never more than MAX_IMAGE_BYTES whatever its header claims."""
    with zf.open(info) as f:
        data = f.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"{info.filename} inflates past {MAX_IMAGE_BYTES:,} bytes")
    return data


def _hidden(part: str) -> bool:
    """A hidden name (`.DS_Store`); `..` is not hidden but refused, with its reason."""
    return part.startswith(".") and part not in (".", "..")


def _zip_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [
        i
        for i in zf.infolist()
        if not i.is_dir() and not any(_hidden(p) or p == "__MACOSX" for p in i.filename.split("/"))
    ]


def _zip_entries(zf: zipfile.ZipFile) -> Iterator[Entry]:
    members = _zip_members(zf)
    tops = {m.filename.split("/", 1)[0] for m in members}
    prefix = ""
    if len(tops) == 1 and all("/" in m.filename for m in members):
        (top,) = tops
        if top.lower() not in SPLIT_FOLDERS and not _NOTEBOOK_SPLIT.match(top):
            prefix = top + "/"  # a zip of one folder: that folder is the root
    for m in members:
        name = m.filename
        if not is_safe_relpath(name):
            yield name, None, "path_outside_root", name
        elif m.file_size > MAX_IMAGE_BYTES:
            yield name.removeprefix(prefix), None, "too_large", f"{m.file_size:,} bytes"
        else:
            yield name.removeprefix(prefix), functools.partial(_read_member, zf, m), None, ""


def _split_of(top: str) -> tuple[str, bool] | None:
    """(split, whether it is the notebook's `<name>_<split>` form) of a top-level folder."""
    if top.lower() in SPLIT_FOLDERS:
        return SPLIT_FOLDERS[top.lower()], False
    m = _NOTEBOOK_SPLIT.match(top)
    return (SPLIT_FOLDERS[m.group(1).lower()], True) if m else None


def _record(rel: str, load: Callable[[], bytes] | None, error: str | None, detail: str) -> Record:
    pure = PurePosixPath(rel)
    parts = list(pure.parts[:-1])
    split, notebook = "", False
    if parts and (found := _split_of(parts[0])) is not None:
        split, notebook = found
        parts.pop(0)
    labels = [name for part in parts for name in part.split("__") if name]
    item_id = pure.with_suffix("").as_posix()
    if notebook:  # `<item id>.jpeg`, `<item id>__2.jpeg`: the item, whatever its photo
        item_id = pure.stem.split("__")[0]
    rec = Record(key=rel, labels=labels, item_id=item_id, split=split, source_url=rel,
                 meta={"file": pure.name})  # fmt: skip
    if error is not None:
        rec.error, rec.detail = error, detail
    elif pure.suffix.lower() not in EXTENSIONS:
        rec.error, rec.detail = "unsupported_extension", pure.suffix or "(none)"
    elif not labels:
        rec.error, rec.detail = "no_label", "image is not inside a category folder"
    else:
        rec.load = load
    return rec


def folder_records(root: Path) -> Iterator[Record]:
    """One record per file of the folder tree `root`."""
    for entry in _dir_entries(root):
        yield _record(*entry)


def zip_records(zf: zipfile.ZipFile) -> Iterator[Record]:
    """One record per file of an open zip of a folder tree."""
    for entry in _zip_entries(zf):
        yield _record(*entry)


def import_folders(
    src: str | Path,
    out: str | Path,
    *,
    levels: list[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> ImportResult:
    """Import an image folder tree (ImageFolder layout, optionally split, or the Vinted
    notebook's `<name>_train/<name>_val`), or a zip of one, into `out`."""
    root = Path(src)
    with ExitStack() as stack:
        if root.is_dir():
            total = sum(1 for _ in _walk(root))
            records = folder_records(root)
            name = root.resolve().name
        elif root.is_file() and zipfile.is_zipfile(root):
            zf = stack.enter_context(zipfile.ZipFile(root))
            total = len(_zip_members(zf))
            records = zip_records(zf)
            name = re.sub(r"_\d{4}-\d{2}-\d{2}$", "", root.stem)  # the export's date
        else:
            raise DatasetError(f"{root} is neither a folder nor a zip file")
        return ingest(
            records,
            out,
            kind="folders",
            fp=fingerprint("folders", src=str(root.resolve()), levels=levels),
            name=name,
            levels=levels or [],
            source=str(root),
            total=total,
            workers=workers,
            progress=progress,
        )
