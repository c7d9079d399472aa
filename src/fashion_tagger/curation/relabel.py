"""The label review's files in a dataset dir: the audit's issues, the reviewer's decisions.

`label_issues.parquet` (`ISSUES_SCHEMA`, `write_issues`, `read_issues`) is written by
`fashion-tagger audit` and by `label` (rows below the confidence threshold), and read by the
review page and by `drop_issues`. `relabel` applies the decisions the review page exports,
without losing anything; `drop_issues` removes the flagged rows nobody decided on.

The decisions file (exported by the review page, read by `dataset relabel --decisions FILE`) is
JSON: a list of decisions, or an object whose `decisions` key holds that list. Without a file,
`relabel` reads the decisions the review server stored in the dataset dir (`curation.journal`),
in the same format. One decision:

    {"image": "images/ab/ab12....jpg",          # the row's `image`, as in label_issues.parquet
     "item_id": "15970",                        # optional; disambiguates a shared image
     "decision": "accept" | "reject",           # accept: the row takes `labels`
     "labels": ["Apparel", "Topwear", "Tshirts"]}  # required for accept: root-to-leaf names

What `relabel` keeps:
- the old labels of every changed row, in its `meta` JSON:
  `meta["label_history"] = [{"labels": old, "change_set": id, "at": time}, ...]`;
- the decision on every reviewed row (accepted or rejected): `meta["review"] =
  {"decision", "change_set", "at"}`, so `drop_issues` leaves decided rows alone;
- each change set in dataset.json: `change_sets = [{"id", "at", "counts"}]`, where `id` is the
  sha256 of the decisions (canonical JSON), plus an entry in `history`.
Applying the same decisions again finds their id recorded and changes nothing. The whole file
is checked before anything is written: a bad file leaves the dataset as it was.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_tagger._io import atomic_path
from fashion_tagger.curation import journal
from fashion_tagger.dataset import manifest
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError

ISSUES_FILE = "label_issues.parquet"
KINDS = ("label", "duplicate_conflict", "outlier", "low_confidence", "ok")
"""Why a row is listed: its label looks wrong; a near-identical photo carries another label; the
photo is far from all others; a predicted label below the confidence threshold (`label`); ok."""

ISSUES_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),  # relative to the dataset dir
        pa.field("given", pa.list_(pa.string()), nullable=False),  # the path in items.parquet
        pa.field("suggested", pa.list_(pa.string()), nullable=False),  # a valid taxonomy path
        pa.field("score", pa.float64(), nullable=False),  # [0, 1], higher = more likely wrong
        pa.field("kind", pa.string(), nullable=False),  # one of KINDS
        pa.field("level", pa.string()),  # level name where given and suggested part; or null
        pa.field("is_issue", pa.bool_(), nullable=False),  # flagged at the audit's threshold
        pa.field("level_scores", pa.list_(pa.float64())),  # 1 - quality per level of `given`
        pa.field("outlier_score", pa.float64()),  # [0, 1], higher = farther from other photos
        pa.field("duplicate_of", pa.string()),  # image of the near-identical, other-label photo
        pa.field("duplicate_item", pa.string()),  # its item_id (the image may be this row's own)
        pa.field("split", pa.string()),
        pa.field("sha256", pa.string()),
    ]
)
"""The one format of `label_issues.parquet`: one row per labelled row scored (or auto-labelled
row queued). The first eight columns are required; the rest may be null. Sorted by score,
issues first. The audit's settings are in the schema metadata (`fashion_tagger.audit`)."""

REQUIRED = ISSUES_SCHEMA.names[:8]
META_KEY = b"fashion_tagger.audit"


def issues_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / ISSUES_FILE


def conform_issues(table: pa.Table) -> pa.Table:
    """Cast a table to `ISSUES_SCHEMA` (optional columns filled with nulls), or say what is wrong."""
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DatasetError(f"label issues table lacks columns {missing}")
    cols = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in ISSUES_SCHEMA
    ]
    try:
        out = pa.table(cols, schema=ISSUES_SCHEMA.with_metadata(table.schema.metadata))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DatasetError(f"label issues table does not fit the schema: {exc}") from exc
    kinds = set(out.column("kind").to_pylist())
    if not kinds <= set(KINDS):
        raise DatasetError(f"unknown kinds {sorted(kinds - set(KINDS))}; use one of {KINDS}")
    scores = np.asarray(out.column("score").to_numpy(zero_copy_only=False), dtype=float)
    if len(scores) and not (np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1):
        raise DatasetError("label issues scores must lie in [0, 1]")
    return out


def write_issues(
    dataset_dir: str | Path, table: pa.Table, settings: dict[str, Any] | None = None
) -> Path:
    """Write `label_issues.parquet` atomically (the audit, the review page and `label` share it).

    Args:
        settings: what produced the rows (backbone, folds, threshold...), kept in the metadata.
    """
    table = conform_issues(table)
    if settings is not None:
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps(settings, default=str).encode()
        table = table.replace_schema_metadata(meta)
    path = issues_path(dataset_dir)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_issues(dataset_dir: str | Path) -> pa.Table:
    """The dataset dir's `label_issues.parquet`, checked against the schema."""
    path = issues_path(dataset_dir)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; run `fashion-tagger audit {dataset_dir}` first")
    try:
        return conform_issues(pq.read_table(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path} is unreadable ({exc}); run the audit again") from exc


def issues_settings(table: pa.Table) -> dict[str, Any]:
    """The settings `write_issues` stored with the rows ({} when none)."""
    raw = (table.schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


DECISIONS = ("accept", "reject")
EXAMPLE = '[{"image": "images/ab/ab12.jpg", "decision": "accept", "labels": ["A", "B"]}]'


class DecisionsError(DatasetError):
    """A decisions file is missing, not JSON, or names rows or paths the dataset lacks."""


@dataclass(frozen=True)
class RelabelResult:
    """What `relabel` did: `changed` rows took new labels, `unchanged` already had them;
    `new_paths` were in no row before (a class the review brought back, or a typo to check)."""

    change_set: str
    already_applied: bool
    accepted: int
    rejected: int
    changed: int
    unchanged: int
    new_paths: list[list[str]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load(decisions: str | Path | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(decisions, str | Path):
        path = Path(decisions)
        if not path.is_file():
            raise DecisionsError(f"decisions file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DecisionsError(
                f"decisions file {path} is not valid JSON ({exc}); expected e.g. {EXAMPLE}"
            ) from exc
    else:
        data = list(decisions)
    if isinstance(data, dict) and "decisions" in data:
        data = data["decisions"]
    if not isinstance(data, list):
        raise DecisionsError(f"decisions must be a JSON list of objects, e.g. {EXAMPLE}")
    return data


def _stored(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """The review server's decisions, or an error saying how to make some."""
    data = journal.stored_decisions(dataset_dir)
    if not data:
        raise DecisionsError(
            f"{Path(dataset_dir) / journal.JOURNAL_FILE} holds no decisions: review the rows "
            f"with `fashion-tagger review {dataset_dir}`, or pass --decisions FILE"
        )
    return data


def _check(data: list[Any], ds: Dataset) -> list[tuple[list[int], str, tuple[str, ...] | None]]:
    """Each decision as (manifest rows, decision, new path); raises on the first bad one."""
    rows_of: dict[str, list[int]] = {}
    for i, img in enumerate(ds.table.column("image").to_pylist()):
        rows_of.setdefault(img, []).append(i)
    items = ds.table.column("item_id").to_pylist()
    out = []
    for n, d in enumerate(data, start=1):
        where = f"decision {n}"
        if not isinstance(d, dict) or not isinstance(d.get("image"), str):
            raise DecisionsError(f"{where} needs an object with an `image` string, e.g. {EXAMPLE}")
        if d.get("decision") not in DECISIONS:
            raise DecisionsError(
                f"{where} ({d['image']}): `decision` must be accept or reject, "
                f"not {d.get('decision')!r}"
            )
        rows = rows_of.get(d["image"], [])
        if d.get("item_id") is not None:
            rows = [i for i in rows if items[i] == str(d["item_id"])]
        if not rows:
            raise DecisionsError(
                f"{where}: no row has image {d['image']!r}"
                + (f" and item_id {d['item_id']!r}" if d.get("item_id") is not None else "")
                + "; was the file exported from another dataset?"
            )
        path = None
        if d["decision"] == "accept":
            labels = d.get("labels")
            if (
                not isinstance(labels, list)
                or not labels
                or not all(isinstance(x, str) and x for x in labels)
            ):
                raise DecisionsError(
                    f"{where} ({d['image']}): accept needs `labels`, a list of names"
                )
            path = tuple(labels)
        out.append((rows, d["decision"], path))
    return out


def change_set_id(data: list[Any]) -> str:
    """The sha256 of the decisions in canonical JSON: the same decisions, the same id."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _set_column(table: pa.Table, name: str, values: list[Any]) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


def relabel(
    dataset_dir: str | Path, decisions: str | Path | Sequence[dict[str, Any]] | None = None
) -> RelabelResult:
    """Apply accepted label fixes to a dataset dir, keeping the old labels in each row's meta.

    Args:
        decisions: a decisions file (see the module docstring) or its parsed list; None: the
            decisions the review server stored in the dataset dir (`review/decisions.jsonl`).

    Returns:
        Counts; `already_applied` when this change set was applied before (nothing written).
    """
    ds = Dataset.open(dataset_dir)
    data = _stored(dataset_dir) if decisions is None else _load(decisions)
    checked = _check(data, ds)
    cs = change_set_id(data)
    counts = Counter(d for _, d, _ in checked)
    applied = {c.get("id") for c in ds.info.extra.get("change_sets") or []}
    if cs in applied:
        return RelabelResult(cs, True, counts["accept"], counts["reject"], 0, 0, [])
    labels = [list(p) for p in ds.labels]
    metas = ds.table.column("meta").to_pylist()
    parsed: dict[int, dict[str, Any]] = {}
    at = manifest.now()
    changed = unchanged = 0
    for rows, decision, path in checked:
        for i in rows:
            meta = parsed.setdefault(i, json.loads(metas[i] or "{}"))
            meta["review"] = {"decision": decision, "change_set": cs, "at": at}
            if decision != "accept" or path is None:
                continue
            if tuple(labels[i]) == path:
                unchanged += 1
                continue
            meta.setdefault("label_history", []).append(
                {"labels": labels[i], "change_set": cs, "at": at}
            )
            labels[i] = list(path)
            changed += 1
    for i, meta in parsed.items():
        metas[i] = json.dumps(meta, ensure_ascii=False)
    table = _set_column(_set_column(ds.table, "labels", labels), "meta", metas)
    known = {tuple(p) for p in ds.labels}
    new_paths = sorted({p for _, d, p in checked if p is not None and p not in known})
    result = RelabelResult(
        cs,
        False,
        counts["accept"],
        counts["reject"],
        changed,
        unchanged,
        [list(p) for p in new_paths],
    )
    summary = {k: v for k, v in result.to_dict().items() if k not in ("change_set",)}
    entry = {"id": cs, "at": at, "counts": summary}
    extra = {**ds.info.extra, "change_sets": [*(ds.info.extra.get("change_sets") or []), entry]}
    ds.with_table(table, extra=extra).with_history("relabel", {"change_set": cs}, summary).save()
    return result


@dataclass(frozen=True)
class DropResult:
    """What `drop_issues` did: rows dropped, by kind, and flagged rows kept because decided."""

    dropped: int
    dropped_by_kind: dict[str, int]
    kept_decided: int
    images_before: int
    images_after: int
    min_score: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drop_issues(dataset_dir: str | Path, min_score: float | None = None) -> DropResult:
    """Drop the rows `label_issues.parquet` flags, except those a review already decided.

    Args:
        min_score: also require score >= this (keeps flagged rows the audit is less sure of).
    """
    if min_score is not None and not 0 <= min_score <= 1:
        raise DatasetError(f"--min-score must be in [0, 1] (got {min_score}); try 0.5")
    ds = Dataset.open(dataset_dir)
    issues = read_issues(dataset_dir).to_pylist()
    flagged = {
        (r["image"], r["item_id"]): r["kind"]
        for r in issues
        if r["is_issue"] and (min_score is None or r["score"] >= min_score)
    }
    keys = zip(
        ds.table.column("image").to_pylist(), ds.table.column("item_id").to_pylist(), strict=True
    )
    drop = np.zeros(len(ds), dtype=bool)
    kinds: Counter[str] = Counter()
    decided = 0
    for i, key in enumerate(keys):
        if key not in flagged:
            continue
        if "review" in ds.meta(i):
            decided += 1
            continue
        drop[i] = True
        kinds[flagged[key]] += 1
    result = DropResult(
        dropped=int(drop.sum()),
        dropped_by_kind=dict(sorted(kinds.items())),
        kept_decided=decided,
        images_before=len(ds),
        images_after=len(ds) - int(drop.sum()),
        min_score=min_score,
    )
    if result.dropped:
        if result.images_after == 0:
            raise DatasetError("dropping every flagged row leaves no image; raise --min-score")
        ds.with_table(ds.table.filter(pa.array(~drop))).with_history(
            "drop_issues", {"min_score": min_score}, result.to_dict()
        ).save()
    return result
