"""Import any CSV or Parquet manifest: one row per image, columns for the labels and the rest.

The image column holds a path relative to the manifest's folder, or an http(s) URL (downloaded,
bounded in size and time). Paths that leave the manifest's folder (`../`, absolute, a symlink
out) are refused with the reason "path_outside_root".
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from fashion_tagger.dataset.ingest import ImportResult, Record, fingerprint, ingest, is_safe_relpath
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources._download import MAX_IMAGE_BYTES, fetch_image
from fashion_tagger.sources.folders import SPLIT_FOLDERS

READ_BATCH = 4096


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    """The manifest's rows as dicts, streamed (Parquet in record batches, CSV line by line)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH):
            yield from batch.to_pylist()
        return
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        yield from csv.DictReader(f)


def _columns(path: Path) -> list[str]:
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return next(csv.reader(f), [])


def _count(path: Path) -> int | None:
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None


def _local(root: Path, rel: str) -> Path | None:
    """`rel` under `root`, or None if it leaves `root` (also through a symlink)."""
    if not is_safe_relpath(rel):
        return None
    path = root / rel
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return path


def _records(
    path: Path,
    *,
    image_column: str,
    label_columns: list[str],
    attribute_columns: list[str],
    item_column: str | None,
    split_column: str | None,
    client: Any,
    max_bytes: int,
) -> Iterator[Record]:
    root = path.parent
    used = {image_column, *label_columns, *attribute_columns, item_column, split_column}
    seen: set[str] = set()
    for i, row in enumerate(_rows(path)):
        image = _text(row.get(image_column))
        labels = [_text(row.get(c)) for c in label_columns]
        while labels and not labels[-1]:
            labels.pop()
        attributes = [f"{c}={v}" for c in attribute_columns if (v := _text(row.get(c)))]
        split_value = _text(row.get(split_column)).lower() if split_column else ""
        meta = {k: _text(v) for k, v in row.items() if k not in used and _text(v)}
        key = image if image and image not in seen else f"row:{i}"
        rec = Record(
            key=key,
            labels=labels,
            item_id=_text(row.get(item_column)) if item_column else "",
            attributes=attributes,
            split=SPLIT_FOLDERS.get(split_value, ""),
            source_url=image,
            meta=meta,
        )
        rec.item_id = rec.item_id or image or f"row-{i}"
        if not image:
            rec.error, rec.detail = "missing_image", f"row {i + 1}: {image_column} is empty"
        elif image in seen:
            rec.error, rec.detail = "duplicate_image", f"row {i + 1}: {image} is listed twice"
        elif not labels:
            rec.error, rec.detail = "no_label", f"row {i + 1}: {label_columns[0]} is empty"
        elif "" in labels:
            rec.error, rec.detail = "gap_in_labels", f"row {i + 1}: a middle level is empty"
        elif image.lower().startswith(("http://", "https://")):
            rec.load = partial(fetch_image, client, image, max_bytes)
        elif (local := _local(root, image)) is None:
            rec.error, rec.detail = "path_outside_root", image
        elif not local.is_file():
            rec.error, rec.detail = "missing_image", f"{image} does not exist"
        else:
            rec.load = local.read_bytes
        seen.add(image)
        yield rec


def import_csv(
    src: str | Path,
    out: str | Path,
    *,
    image_column: str = "image",
    label_columns: list[str],
    attribute_columns: list[str] | None = None,
    item_column: str | None = None,
    split_column: str | None = None,
    timeout: float = 30.0,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    workers: int | None = None,
    progress: bool = True,
    allow_private_hosts: bool = False,
) -> ImportResult:
    """Import a CSV or Parquet manifest into the dataset dir `out`.

    Image URLs to private, loopback, link-local or reserved addresses are refused row by row
    (the `_net` guard, as `serve` does) unless `allow_private_hosts`.

    Args:
        label_columns: one column per level, root first; the level names are these columns.
        attribute_columns: columns whose values become `column=value` attributes.
        item_column: the product id (photos of one item share it); default the image path.
        split_column: train / val (validation) / test per row; other values mean no split.
        timeout, max_image_bytes: limits on each image downloaded from a URL.

    Example:
        >>> import_csv("shop/manifest.csv", "data/shop", label_columns=["category", "type"])
    """
    src = Path(src)
    if not src.is_file():
        raise DatasetError(f"{src} is not a file; pass a .csv or .parquet manifest")
    if not label_columns:
        raise DatasetError("give at least one label column (--label-columns a,b,c)")
    columns = _columns(src)
    wanted = [image_column, *label_columns, *(attribute_columns or [])]
    wanted += [c for c in (item_column, split_column) if c]
    if missing := [c for c in wanted if c not in columns]:
        raise DatasetError(f"{src} has no column {missing}; its columns are {columns}")
    import httpx

    from fashion_tagger._net import check_request_url

    with contextlib.ExitStack() as stack:

        def guard(request: httpx.Request) -> None:  # every request, each redirect included
            check_request_url(str(request.url), allow_private_hosts, "--allow-private-hosts")

        client = stack.enter_context(
            httpx.Client(timeout=timeout, event_hooks={"request": [guard]}, trust_env=False)
        )
        records = _records(
            src,
            image_column=image_column,
            label_columns=label_columns,
            attribute_columns=attribute_columns or [],
            item_column=item_column,
            split_column=split_column,
            client=client,
            max_bytes=max_image_bytes,
        )
        return ingest(
            records,
            out,
            kind="csv",
            fp=fingerprint(
                "csv",
                src=str(src.resolve()),
                image=image_column,
                labels=label_columns,
                attributes=attribute_columns,
                item=item_column,
                split=split_column,
            ),
            name=src.stem,
            levels=list(label_columns),
            source=str(src),
            total=_count(src),
            workers=workers,
            progress=progress,
        )
