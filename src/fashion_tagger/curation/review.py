"""The label review page: one self-contained HTML file to accept or reject suggested labels.

It shows the rows of `label_issues.parquet` (the audit's suspected label errors and the
`label` verb's low-confidence queue) with their thumbnails embedded as small JPEG data URIs, so
the file opens anywhere, offline, with nothing beside it. Sorting by score, filtering by class
and kind, and the keyboard (j/k to move, a/r to accept or reject, u to undo, e to export) run in
the page; the exported decisions file is what `dataset relabel --decisions` reads:
`[{"image", "item_id", "decision": "accept"|"reject", "labels": [...]}]`, where `labels` is
the suggested path for an accepted row and the given one for a rejected row.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from fashion_tagger._io import atomic_path
from fashion_tagger.curation import relabel as issues
from fashion_tagger.dataset import images
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError

ISSUES_FILE = issues.ISSUES_FILE
PAGE_FILE = "review.html"
DECISIONS_FILE = "decisions.json"
MAX_ROWS = 2000
"""Rows on one page: at about 3 kB a thumbnail, 2,000 rows make a 6 MB page."""
THUMB = 96
PLACEHOLDER = "__REVIEW_DATA__"
Issues = pa.Table | Iterable[Mapping[str, Any]] | Any


def _template() -> str:
    return resources.files("fashion_tagger.curation").joinpath("static/review.html").read_text()


def as_rows(issues: Issues) -> list[dict[str, Any]]:
    """A table, a pandas DataFrame or dicts, as a list of dicts."""
    if isinstance(issues, pa.Table):
        return issues.to_pylist()
    if hasattr(issues, "to_dict") and hasattr(issues, "columns"):  # pandas, without importing it
        return issues.to_dict(orient="records")
    return [dict(r) for r in issues]


def as_path(value: Any) -> list[str]:
    """A path cell (a list, one name, null or a pandas NaN) as a list of names."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]


def _score(value: Any) -> float:
    try:
        s = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if math.isnan(s) else min(1.0, max(0.0, s))


def thumbnail(path: Path, size: int = THUMB) -> str | None:
    """A small JPEG of the image as a data URI (None when it is missing or unreadable)."""
    try:
        img = images.decode(path, size=size)
    except (OSError, ValueError, images.ImageError):
        return None
    img.thumbnail((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=70, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _select(rows: list[dict[str, Any]], only_issues: bool, max_rows: int) -> list[dict[str, Any]]:
    """Flagged rows (when the table says which), highest score first, at most `max_rows`."""
    if only_issues:
        rows = [r for r in rows if r.get("is_issue") is None or bool(r.get("is_issue"))]
    rows = sorted(rows, key=lambda r: -_score(r.get("score")))
    return rows[:max_rows]


def page_data(
    ds: Dataset,
    issues: Issues,
    *,
    only_issues: bool = True,
    max_rows: int = MAX_ROWS,
    thumb: int = THUMB,
) -> dict[str, Any]:
    """What the page embeds: the rows to review (with thumbnails) and a few facts."""
    every = as_rows(issues)
    chosen = _select(every, only_issues, max_rows)
    candidates = len(_select(every, only_issues, len(every)))
    rows = []
    for order, r in enumerate(chosen):
        image = str(r.get("image") or "")
        level = r.get("level")
        rows.append(
            {
                "order": order,
                "image": image,
                "item_id": str(r.get("item_id") or ""),
                "given": as_path(r.get("given")),
                "suggested": as_path(r.get("suggested")),
                "score": _score(r.get("score")),
                "kind": str(r.get("kind") or "issue"),
                "level": "" if level is None else str(level),
                "thumb": thumbnail(ds.root / image, thumb) if image else None,
            }
        )
    return {
        "dataset": ds.name,
        # The key under which the browser keeps decisions between visits: one per dataset dir,
        # without writing the machine's path into the page.
        "key": hashlib.sha256(str(ds.root.resolve()).encode()).hexdigest()[:16],
        "levels": list(ds.level_names),
        "total": candidates,
        "omitted": candidates - len(rows),
        "decisions_file": DECISIONS_FILE,
        "rows": rows,
    }


def render_page(data: dict[str, Any]) -> str:
    """The template with `data` embedded as JSON (safe inside a <script> element)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _template().replace(PLACEHOLDER, text)


def read_issues(dataset_dir: str | Path) -> pa.Table:
    """`label_issues.parquet` of a dataset dir (checked against its schema), or an error that
    says how to make it."""
    path = issues.issues_path(dataset_dir)
    if not path.is_file():
        raise DatasetError(
            f"{path} does not exist: run `fashion-tagger audit {dataset_dir}` (suspected label "
            "errors) or `fashion-tagger label RUN_DIR PHOTOS --out "
            f"{dataset_dir}` (photos to label) first"
        )
    return issues.read_issues(dataset_dir)


def write_review_page(
    dataset_dir: str | Path,
    out_html: str | Path | None = None,
    issues: Issues | None = None,
    *,
    only_issues: bool = True,
    max_rows: int = MAX_ROWS,
    thumb: int = THUMB,
) -> Path:
    """Write the review page of a dataset dir's label issues; returns its path.

    Args:
        out_html: where to write it (default `review.html` in the dataset dir).
        issues: the rows to review (a table, DataFrame or dicts with `item_id`, `image`,
            `given`, `suggested`, `score`, `kind`, `level`, `is_issue`); default the dataset
            dir's `label_issues.parquet`.
        only_issues: only rows flagged `is_issue` (when the rows say).
        max_rows: the most rows on the page (highest scores first).
        thumb: thumbnail side in pixels.

    Example:
        >>> write_review_page("data/products")
        PosixPath('data/products/review.html')
    """
    if max_rows < 1 or thumb < 8:
        raise DatasetError("--max-rows must be 1 or more and the thumbnail 8 px or more")
    ds = Dataset.open(dataset_dir)
    if issues is None:
        issues = read_issues(dataset_dir)
    out = Path(out_html) if out_html is not None else ds.root / PAGE_FILE
    data = page_data(ds, issues, only_issues=only_issues, max_rows=max_rows, thumb=thumb)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(render_page(data), encoding="utf-8")
    return out
