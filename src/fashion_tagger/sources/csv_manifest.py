"""Import any CSV or Parquet manifest: one row per image, columns for the labels and the rest.

The image column holds a path relative to the manifest's folder, an http(s) URL (downloaded,
bounded in size and time, through the address guard) or an object-store URL (`s3://...`, any
fsspec object store), fetched concurrently. Paths that leave the manifest's folder (`../`,
absolute, a symlink out) are refused with the reason "path_outside_root".

The row handling (`Columns`, `manifest_records`, `import_rows`) is shared with `import sql`:
both sources are tables of rows, and a row means the same whichever file or database it is in.
A marketplace category id column can give the label path instead of label columns, through the
category tree of a crawl (`--category-tree crawl.db`).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import functools
import hashlib
import json
import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fashion_tagger import storage
from fashion_tagger.dataset.ingest import ImportResult, Record, fingerprint, ingest, is_safe_relpath
from fashion_tagger.errors import DatasetError
from fashion_tagger.sources._download import MAX_IMAGE_BYTES, fetch_image
from fashion_tagger.sources.folders import SPLIT_FOLDERS

READ_BATCH = 4096
FETCH_WORKERS = 16
"""Image URLs fetched at once: each costs a round trip, so throughput comes from concurrency."""
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss"})
"""fsspec schemes accepted in an image column; never `file`, `local`, `memory` or chains."""


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


@dataclass(frozen=True)
class Columns:
    """Which source columns hold what; shared by every tabular source (CSV, Parquet, SQL).

    Attributes:
        image: an image path relative to the source's image root, an http(s) URL, or an
            object-store URL (`s3://bucket/key`, `gs://...`).
        labels: one column per level, root first (empty when `category` gives the path).
        attributes: columns whose values become `column=value` attributes.
        item: the product id (photos of one item share it); default the image.
        split: train / val (validation) / test per row; other values mean no split.
        category: a marketplace category id, mapped to its path by a category tree.
    """

    image: str = "image"
    labels: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    item: str | None = None
    split: str | None = None
    category: str | None = None

    @property
    def wanted(self) -> list[str]:
        named = [self.image, *self.labels, *self.attributes, self.item, self.split, self.category]
        return [c for c in named if c]

    def check(self, available: Sequence[str], where: str) -> None:
        """One line naming the missing columns and the ones there are."""
        if not self.labels and not self.category:
            raise DatasetError(
                "give at least one label column (--label-columns a,b,c), or a category id "
                "column and its tree (--category-column catalog_id --category-tree crawl.db)"
            )
        if missing := [c for c in self.wanted if c not in available]:
            raise DatasetError(
                f"{where} has no column {missing}; its columns are {list(available)}"
            )


def _fetcher(url: str, client: Any, max_bytes: int) -> Callable[[], bytes] | None:
    """How to fetch an image URL: http(s) through the guarded client, object stores through
    fsspec; None for any other scheme (a `file://`, `local://` or chained `a::b` URL could read
    files outside the image root)."""
    lower = url.lower()
    if lower.startswith(("http://", "https://")):
        return partial(fetch_image, client, url, max_bytes)
    scheme = lower.split("://", 1)[0]
    if "://" in lower and scheme in OBJECT_STORES and "::" not in url:
        return partial(fetch_object, url, max_bytes)
    return None


def fetch_object(url: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """One object's bytes from object storage (credentials from the environment, as for dataset
    dirs), bounded in size; failures raise OSError so the row is skipped with the reason."""
    remote_fs = _object_fs(url.split("://", 1)[0].lower())
    try:
        size = remote_fs.size(url)
        if size is not None and size > max_bytes:
            raise ValueError(f"{url} is larger than {max_bytes:,} bytes")
        data = remote_fs.cat_file(url, start=0, end=max_bytes + 1)
    except FileNotFoundError as exc:
        raise OSError(f"{url} does not exist") from exc
    except (OSError, ValueError):
        raise
    except Exception as exc:  # the store's client errors (credentials, bucket): a skipped row
        raise OSError(f"fetching {url} failed: {exc}") from exc
    if len(data) > max_bytes:
        raise ValueError(f"{url} is larger than {max_bytes:,} bytes")
    return data


@functools.cache
def _object_fs(scheme: str) -> Any:
    storage.Remote.open(f"{scheme}://probe")  # the `pip install` line when the driver is missing
    import fsspec

    return fsspec.filesystem(scheme)


def _row_record(
    i: int, row: dict[str, Any], cols: Columns, tree: dict[int, list[str]] | None
) -> Record:
    """A row's record with its labels, attributes, split and meta, before its image is known."""
    image = _text(row.get(cols.image))
    if tree is not None and cols.category:
        raw = _text(row.get(cols.category))
        cid = _category_id(raw)
        labels = list(tree.get(cid, [])) if cid is not None else []
    else:
        labels = [_text(row.get(c)) for c in cols.labels]
        raw = ""
    while labels and not labels[-1]:
        labels.pop()
    used = set(cols.wanted)
    rec = Record(
        key=image or f"row:{i}",
        labels=labels,
        item_id=(_text(row.get(cols.item)) if cols.item else "") or image or f"row-{i}",
        attributes=[f"{c}={v}" for c in cols.attributes if (v := _text(row.get(c)))],
        split=SPLIT_FOLDERS.get(_text(row.get(cols.split)).lower() if cols.split else "", ""),
        source_url=image,
        meta={k: _text(v) for k, v in row.items() if k not in used and _text(v)},
    )
    if tree is not None and cols.category:
        rec.meta[cols.category] = raw
        if not labels:
            rec.error = "unknown_category"
            rec.detail = f"row {i + 1}: {cols.category}={raw!r} is not in the category tree"
    return rec


def manifest_records(
    rows: Iterable[dict[str, Any]],
    root: Path | None,
    cols: Columns,
    *,
    client: Any,
    max_bytes: int,
    tree: dict[int, list[str]] | None = None,
) -> Iterator[Record]:
    """Records of a tabular source's rows (CSV, Parquet or SQL alike): labels from the label
    columns or the category tree, images from paths under `root` (None: URLs only) or URLs."""
    seen: set[str] = set()
    first = cols.labels[0] if cols.labels else cols.category
    for i, row in enumerate(rows):
        rec = _row_record(i, row, cols, tree)
        image = rec.source_url
        if image in seen:
            rec.key = f"row:{i}"
        if rec.error:
            pass
        elif not image:
            rec.error, rec.detail = "missing_image", f"row {i + 1}: {cols.image} is empty"
        elif image in seen:
            rec.error, rec.detail = "duplicate_image", f"row {i + 1}: {image} is listed twice"
        elif not rec.labels:
            rec.error, rec.detail = "no_label", f"row {i + 1}: {first} is empty"
        elif "" in rec.labels:
            rec.error, rec.detail = "gap_in_labels", f"row {i + 1}: a middle level is empty"
        elif "://" in image:
            rec.load = _fetcher(image, client, max_bytes)
            if rec.load is None:
                rec.error, rec.detail = "unsupported_url", f"row {i + 1}: {image}"
        elif root is None:
            rec.error = "no_image_root"
            rec.detail = f"row {i + 1}: {image} is a relative path; pass --image-root DIR"
        elif (local := _local(root, image)) is None:
            rec.error, rec.detail = "path_outside_root", image
        elif not local.is_file():
            rec.error, rec.detail = "missing_image", f"{image} does not exist"
        else:
            rec.load = local.read_bytes
        seen.add(image)
        yield rec


def prefetched(records: Iterable[Record], workers: int = FETCH_WORKERS) -> Iterator[Record]:
    """The same records, in order, with URL images fetched `workers` at a time ahead of the
    consumer: ingest loads one record after another, and a remote image costs a round trip."""
    with ThreadPoolExecutor(workers) as pool:
        window: collections.deque[tuple[Record, Future | None]] = collections.deque()
        for rec in records:
            remote = rec.load is not None and "://" in rec.source_url
            window.append((rec, pool.submit(rec.load) if remote else None))
            if len(window) >= 4 * workers:
                yield _settled(*window.popleft())
        while window:
            yield _settled(*window.popleft())


def _settled(rec: Record, fut: Future | None) -> Record:
    if fut is not None:
        rec.load = fut.result  # re-raises the fetch's OSError/ValueError when ingest loads it
    return rec


def read_category_tree(path: str | Path) -> dict[int, list[str]]:
    """Category id -> path from the root, from a crawl's state (`crawl.db`, table `categories`
    with `id` and `path`, a JSON list of titles, as `crawl vinted` writes it).

    The file is opened read-only and untrusted: a row whose path is not a list of names is
    an error naming the row."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"category tree {path} is not a file; pass a crawl.db from crawl vinted")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT id, path FROM categories").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise DatasetError(f"{path} is not a crawl.db with a categories table: {exc}") from exc
    tree: dict[int, list[str]] = {}
    for cid, text in rows:
        try:
            names = json.loads(text)
        except (TypeError, ValueError):
            names = None
        if (
            not isinstance(cid, int)
            or not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n.strip() for n in names)
        ):
            raise DatasetError(f"{path}: category {cid!r} has no valid path ({str(text)[:80]!r})")
        tree[cid] = [n.strip() for n in names]
    if not tree:
        raise DatasetError(f"{path} holds no categories; crawl them first (crawl vinted)")
    return tree


def category_fingerprint(column: str | None, tree: str | Path | None) -> dict[str, Any]:
    """What a category tree adds to an import's fingerprint: the id column and the tree's
    content (a tree that maps ids to other paths is another import; a crawl.db whose other
    tables changed is not)."""
    if not tree:
        return {"category": column, "tree": None}
    content = json.dumps(sorted(read_category_tree(tree).items()))
    return {"category": column, "tree": hashlib.sha256(content.encode()).hexdigest()[:16]}


def _category_id(raw: str) -> int | None:
    """`123`, `123.0` (a float column) -> 123; anything else -> None."""
    head, _, frac = raw.partition(".")
    if head.lstrip("-").isdigit() and frac.strip("0") == "":
        return int(head)
    return None


def tree_levels(tree: dict[int, list[str]]) -> list[str]:
    """The level names of a marketplace tree: the Vinted crawl's, then level5, level6, ..."""
    from fashion_tagger.sources.vinted.crawler import LEVELS

    depth = max(map(len, tree.values()), default=0)
    return [*LEVELS, *(f"level{d}" for d in range(len(LEVELS), depth))][:depth]


def import_rows(
    rows: Iterable[dict[str, Any]],
    out: str | Path,
    cols: Columns,
    *,
    kind: str,
    fp: str,
    name: str,
    source: str,
    root: Path | None,
    total: int | None = None,
    category_tree: str | Path | None = None,
    timeout: float = 30.0,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    workers: int | None = None,
    progress: bool = True,
    allow_private_hosts: bool = False,
) -> ImportResult:
    """The one import path of tabular sources: rows -> records (labels, guarded downloads,
    concurrent fetches) -> `ingest`. `fp` is the import's `fingerprint`, for resuming."""
    import httpx

    from fashion_tagger._net import check_request_url

    tree = read_category_tree(category_tree) if category_tree else None
    if tree is not None and not cols.category:
        raise DatasetError("--category-tree needs the id column: --category-column catalog_id")
    if tree is None and cols.category:
        raise DatasetError("--category-column needs its tree: --category-tree crawl.db")
    levels = tree_levels(tree) if tree is not None else list(cols.labels)
    with contextlib.ExitStack() as stack:

        def guard(request: httpx.Request) -> None:  # every request, each redirect included
            check_request_url(str(request.url), allow_private_hosts, "--allow-private-hosts")

        client = stack.enter_context(
            httpx.Client(timeout=timeout, event_hooks={"request": [guard]}, trust_env=False)
        )
        records = manifest_records(rows, root, cols, client=client, max_bytes=max_image_bytes,
                                   tree=tree)  # fmt: skip
        return ingest(
            prefetched(records),
            out,
            kind=kind,
            fp=fp,
            name=name,
            levels=levels,
            source=source,
            total=total,
            workers=workers,
            progress=progress,
        )


def import_csv(
    src: str | Path,
    out: str | Path,
    *,
    image_column: str = "image",
    label_columns: list[str] | None = None,
    attribute_columns: list[str] | None = None,
    item_column: str | None = None,
    split_column: str | None = None,
    category_column: str | None = None,
    category_tree: str | Path | None = None,
    timeout: float = 30.0,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    workers: int | None = None,
    progress: bool = True,
    allow_private_hosts: bool = False,
) -> ImportResult:
    """Import a CSV or Parquet manifest into the dataset dir `out`.

    Image URLs to private, loopback, link-local or reserved addresses are refused row by row
    (the `_net` guard, as `serve` does) unless `allow_private_hosts`. Object-store URLs
    (`s3://bucket/key`, `gs://...`) are fetched with the store's own credentials from the
    environment; every URL is fetched concurrently, ahead of the import.

    Args:
        label_columns: one column per level, root first; the level names are these columns.
        attribute_columns: columns whose values become `column=value` attributes.
        item_column: the product id (photos of one item share it); default the image path.
        split_column: train / val (validation) / test per row; other values mean no split.
        category_column, category_tree: a marketplace category id column and the crawl.db
            whose category tree maps each id to its label path (instead of label columns).
        timeout, max_image_bytes: limits on each image downloaded from a URL.

    Example:
        >>> import_csv("shop/manifest.csv", "data/shop", label_columns=["category", "type"])
    """
    src = Path(src)
    if not src.is_file():
        raise DatasetError(f"{src} is not a file; pass a .csv or .parquet manifest")
    cols = Columns(image_column, tuple(label_columns or ()), tuple(attribute_columns or ()),
                   item_column, split_column, category_column)  # fmt: skip
    cols.check(_columns(src), str(src))
    fp_args = dict(src=str(src.resolve()), image=image_column, labels=label_columns,
                   attributes=attribute_columns, item=item_column, split=split_column)  # fmt: skip
    if category_tree or category_column:  # only then: fingerprints of earlier imports stay valid
        fp_args |= category_fingerprint(category_column, category_tree)
    return import_rows(
        _rows(src),
        out,
        cols,
        kind="csv",
        fp=fingerprint("csv", **fp_args),
        name=src.stem,
        source=str(src),
        root=src.parent,
        total=_count(src),
        category_tree=category_tree,
        timeout=timeout,
        max_image_bytes=max_image_bytes,
        workers=workers,
        progress=progress,
        allow_private_hosts=allow_private_hosts,
    )
