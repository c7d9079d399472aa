"""Import a SQL query's rows through SQLAlchemy: the catalogue where it already lives.

`import sql URL --query "SELECT ..."` takes the same column options as `import csv` and goes
through the same row handling (`csv_manifest.import_rows`): a row means the same in a file or a
table. Rows are streamed from the server in batches (`stream_results` + `yield_per`: a
server-side cursor on PostgreSQL), so memory does not grow with the table. Images are URLs
(http(s), `s3://`, ...) or paths under `--image-root`.

The database URL is SQLAlchemy's (`postgresql://user@host/db`, `sqlite:///catalogue.db`);
its password is never written to the dataset dir or printed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fashion_tagger.dataset.ingest import ImportResult, fingerprint
from fashion_tagger.errors import DatasetError, require
from fashion_tagger.sources._download import MAX_IMAGE_BYTES
from fashion_tagger.sources.csv_manifest import Columns, category_fingerprint, import_rows

BATCH_ROWS = 1000
"""Rows fetched from the server at a time."""


def _engine(url: str):
    sa = require("sqlalchemy", "sql")
    try:
        return sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise DatasetError(
            f"cannot open database URL: {exc}; for PostgreSQL: pip install 'fashion-tagger[sql]'"
        ) from exc


def _streamed(result: Any, batch_rows: int) -> Iterator[dict[str, Any]]:
    """The rows as dicts, fetched from the cursor `batch_rows` at a time."""
    for part in result.partitions(batch_rows):
        for row in part:
            yield dict(row._mapping)


def import_sql(
    url: str,
    out: str | Path,
    *,
    query: str,
    image_column: str = "image",
    label_columns: list[str] | None = None,
    attribute_columns: list[str] | None = None,
    item_column: str | None = None,
    split_column: str | None = None,
    category_column: str | None = None,
    category_tree: str | Path | None = None,
    image_root: str | Path | None = None,
    batch_rows: int = BATCH_ROWS,
    timeout: float = 30.0,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    workers: int | None = None,
    progress: bool = True,
    allow_private_hosts: bool = False,
) -> ImportResult:
    """Import the rows of `query` on the database at `url` into the dataset dir `out`.

    Args:
        query: one SELECT; its result columns are what the column options name.
        image_root: the folder relative image paths are under (none: URLs only).
        batch_rows: rows fetched from the server at a time.
        Others: as `import_csv`.

    Example:
        >>> import_sql("postgresql://shop@db/catalogue", "data/shop",
        ...            query="SELECT image_url, category, type FROM listings",
        ...            image_column="image_url", label_columns=["category", "type"])
    """
    sa = require("sqlalchemy", "sql")
    if not query.strip():
        raise DatasetError('give the rows to import: --query "SELECT ..."')
    engine = _engine(url)
    shown = engine.url.render_as_string(hide_password=True)
    cols = Columns(image_column, tuple(label_columns or ()), tuple(attribute_columns or ()),
                   item_column, split_column, category_column)  # fmt: skip
    root = Path(image_root) if image_root else None
    if root is not None and not root.is_dir():
        raise DatasetError(f"--image-root {root} is not a folder")
    fp_args = dict(url=shown, query=query, columns=[cols.image, cols.labels, cols.attributes, cols.item, cols.split, cols.category],
                   root=str(root.resolve()) if root else None)  # fmt: skip
    fp_args |= category_fingerprint(category_column, category_tree)
    with contextlib.ExitStack() as stack:
        try:
            conn = stack.enter_context(engine.connect())
            result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
                sa.text(query)
            )
        except sa.exc.SQLAlchemyError as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise DatasetError(f"query on {shown} failed: {detail}") from exc
        cols.check(list(result.keys()), "the query's result")
        try:
            return import_rows(
                _streamed(result, batch_rows),
                out,
                cols,
                kind="sql",
                fp=fingerprint("sql", **fp_args),
                name=(engine.url.database and Path(engine.url.database).stem) or "sql",
                source=shown,
                root=root,
                category_tree=category_tree,
                timeout=timeout,
                max_image_bytes=max_image_bytes,
                workers=workers,
                progress=progress,
                allow_private_hosts=allow_private_hosts,
            )
        except sa.exc.SQLAlchemyError as exc:  # the server failed mid-stream: resumable
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise DatasetError(
                f"reading rows from {shown} failed: {detail}; re-run to resume"
            ) from exc
        finally:
            engine.dispose()
