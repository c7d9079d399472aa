"""The dataset dir on disk: `items.parquet` (one row per image) and `dataset.json`.

Both are written atomically (temp file + rename). `dataset.json` carries a format version that
every reader checks, so stages only ever read a layout they understand.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fashion_tagger._io import atomic_path, write_json_atomic
from fashion_tagger.errors import DatasetError

FORMAT_VERSION = 1
ITEMS_FILE = "items.parquet"
INFO_FILE = "dataset.json"
SPLITS = ("train", "val", "test")

SCHEMA = pa.schema(
    [
        pa.field("image", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("attributes", pa.list_(pa.string()), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("meta", pa.string(), nullable=False),
    ]
)
COLUMNS = tuple(SCHEMA.names)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with every column) to a table of the manifest schema."""
    return pa.Table.from_pylist(
        [{c: r.get(c, _DEFAULTS.get(c)) for c in COLUMNS} for r in rows], schema=SCHEMA
    )


_DEFAULTS: dict[str, Any] = {
    "labels": [],
    "attributes": [],
    "split": "",
    "source": "",
    "source_url": "",
    "meta": "{}",
    "width": 0,
    "height": 0,
}


def conform(table: pa.Table) -> pa.Table:
    """Cast a table to the manifest schema (column order, types), or say what is wrong."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetError(f"items table lacks columns {missing}")
    try:
        return table.select(list(COLUMNS)).cast(SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DatasetError(f"items table does not fit the manifest schema: {exc}") from exc


def write_items(root: Path, table: pa.Table) -> None:
    table = conform(table)
    with atomic_path(root / ITEMS_FILE) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_items(root: Path) -> pa.Table:
    path = root / ITEMS_FILE
    if not path.is_file():
        raise DatasetError(f"{root} is not a dataset dir: {ITEMS_FILE} is missing")
    try:
        return conform(pq.read_table(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path} is unreadable: {exc}") from exc


def read_info(root: Path) -> dict[str, Any]:
    path = root / INFO_FILE
    if not path.is_file():
        raise DatasetError(f"{root} is not a dataset dir: {INFO_FILE} is missing")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{path} has format version {version!r}; this fashion-tagger reads version "
            f"{FORMAT_VERSION}. Re-import the data or upgrade fashion-tagger."
        )
    return info


def write_info(root: Path, info: dict[str, Any]) -> None:
    write_json_atomic(root / INFO_FILE, {"format_version": FORMAT_VERSION, **info})
