"""Import Kaggle's "Fashion Product Images" (full or small): `styles.csv` + `images/<id>.jpg`.

From the downloaded zip or an unpacked folder; `styles.csv` may sit anywhere inside. Labels are
masterCategory > subCategory > articleType; gender, baseColour, season and usage become
attributes; the product title, year and any other column go to `meta`.

The real styles.csv has rows with unquoted commas inside productDisplayName (the last column):
their surplus fields are joined back into the title. Rows too short to hold the labels, rows
without an image, and ids that would point outside the dataset's folder are skipped with a reason.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path, PurePosixPath

from fashion_tagger.dataset.ingest import ImportResult, Record, fingerprint, ingest, is_safe_relpath
from fashion_tagger.errors import DatasetError

STYLES = "styles.csv"
LEVELS = ["masterCategory", "subCategory", "articleType"]
ATTRIBUTES = {"gender": "gender", "baseColour": "colour", "season": "season", "usage": "usage"}
TITLE = "productDisplayName"
MISSING = {"", "nan", "NaN", "NA", "null", "None"}


def _clean(value: str | None) -> str:
    value = (value or "").strip()
    return "" if value in MISSING else value


def parse_styles(text: str) -> Iterator[tuple[int, dict[str, str] | None]]:
    """Rows of styles.csv as dicts (line number first); None for a row that cannot be used.

    Tolerant: a row with more fields than the header has the surplus joined into the last column
    (the title, where the stray commas are); a row with fewer than the label columns is None.
    """
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DatasetError("styles.csv is empty") from None
    needed = ["id", *LEVELS]
    if missing := [c for c in needed if c not in header]:
        raise DatasetError(
            f"styles.csv lacks the columns {missing}; is this the Kaggle Fashion Product Images data?"
        )
    width = len(header)
    need = max(header.index(c) for c in needed) + 1
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        if len(row) > width:
            row = [*row[: width - 1], ",".join(row[width - 1 :])]
        if len(row) < need:
            yield line, None
            continue
        yield line, dict(zip(header, row + [""] * (width - len(row)), strict=True))


def _record(line: int, row: dict[str, str] | None, image_exists, load) -> Record:
    if row is None:
        return Record(
            key=f"line:{line}",
            labels=[],
            item_id="",
            error="malformed_csv_line",
            detail=f"styles.csv line {line} has too few fields",
        )
    pid = _clean(row.get("id"))
    labels = []
    for level in LEVELS:
        value = _clean(row.get(level))
        if not value:
            break
        labels.append(value)
    attributes = [
        f"{group}={v}" for col, group in ATTRIBUTES.items() if (v := _clean(row.get(col)))
    ]
    meta = {"title": _clean(row.get(TITLE))}
    known = {"id", *LEVELS, *ATTRIBUTES, TITLE}
    meta |= {k: c for k, v in row.items() if k not in known and (c := _clean(v))}
    rel = f"images/{pid}.jpg"
    rec = Record(
        key=f"id:{pid}",
        labels=labels,
        item_id=pid,
        attributes=attributes,
        source_url=rel,
        meta=meta,
    )
    if not pid:
        rec.key, rec.error, rec.detail = f"line:{line}", "malformed_csv_line", "empty id"
    elif not is_safe_relpath(rel):
        rec.error, rec.detail = "path_outside_root", rel
    elif not labels:
        rec.error, rec.detail = "no_label", f"{LEVELS[0]} is empty"
    elif not image_exists(rel):
        rec.error, rec.detail = "missing_image", f"{rel} is not in the source"
    else:
        rec.load = partial(load, rel)
    return rec


def _records(text: str, source: _Source) -> Iterator[Record]:
    seen: set[str] = set()
    for line, row in parse_styles(text):
        rec = _record(line, row, source.exists, source.load)
        if rec.key in seen:
            rec.key, rec.load = f"line:{line}", None
            rec.error, rec.detail = "duplicate_id", f"id {rec.item_id} appears on an earlier line"
        seen.add(rec.key)
        yield rec


class _Source:
    """styles.csv text, and image lookup/loading, for a zip or a folder alike."""

    def __init__(self, src: Path, stack: ExitStack) -> None:
        self.src = src
        if src.is_dir():
            candidates = sorted(src.rglob(STYLES), key=lambda p: (len(p.parts), str(p)))
            if not candidates:
                raise DatasetError(f"no {STYLES} found under {src}")
            self.base = candidates[0].parent
            self.styles = candidates[0].read_bytes()
            self.exists: Callable[[str], bool] = lambda rel: (self.base / rel).is_file()
            self.load: Callable[[str], bytes] = lambda rel: (self.base / rel).read_bytes()
            return
        if not zipfile.is_zipfile(src):
            raise DatasetError(f"{src} is neither a folder nor a zip file")
        zf = stack.enter_context(zipfile.ZipFile(src))
        members = {i.filename: i for i in zf.infolist() if not i.is_dir()}
        styles = sorted(
            (n for n in members if PurePosixPath(n).name == STYLES and is_safe_relpath(n)),
            key=lambda n: (n.count("/"), n),
        )
        if not styles:
            raise DatasetError(
                f"no {STYLES} found in {src} (entries outside the zip's root are ignored)"
            )
        parent = str(PurePosixPath(styles[0]).parent)
        prefix = "" if parent == "." else parent + "/"
        self.styles = zf.read(members[styles[0]])
        self.exists = lambda rel: prefix + rel in members
        self.load = lambda rel: zf.read(members[prefix + rel])


def _count_rows(text: str) -> int:
    return sum(1 for _ in csv.reader(io.StringIO(text))) - 1


def import_kaggle_products(
    src: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> ImportResult:
    """Import the Kaggle Fashion Product Images dataset (zip or folder) into the dataset dir `out`.

    Example:
        >>> import_kaggle_products("../shared/datasets/fashion-product-images-small.zip", "data/products")
    """
    src = Path(src)
    if not src.exists():
        raise DatasetError(f"{src} does not exist; pass the Kaggle zip or its unpacked folder")
    with ExitStack() as stack:
        source = _Source(src, stack)
        text = source.styles.decode("utf-8", errors="replace")
        return ingest(
            _records(text, source),
            out,
            kind="kaggle-products",
            fp=fingerprint("kaggle-products", src=str(src.resolve())),
            name=src.stem,
            levels=LEVELS,
            source=str(src),
            total=_count_rows(text),
            workers=workers,
            progress=progress,
            extra_info={"attribute_columns": ATTRIBUTES},
        )
