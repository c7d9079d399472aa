"""The dataset dir on disk: `items.parquet` (one row per image) and `dataset.json`.

Both are written atomically (temp file + rename). `dataset.json` carries a format version that
every reader checks, so stages only ever read a layout they understand.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fashion_tagger._io import atomic_path, write_json_atomic
from fashion_tagger.errors import DatasetError
from fashion_tagger.storage import Remote

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


@dataclass(frozen=True)
class ManifestRow:
    """One row of `items.parquet`: one image and its labels. Built here only, by every source.

    Attributes:
        image: the path relative to the dataset dir (`store.relpath(sha256, ext)`).
        item_id: the source's product id; photos of one item share it and never split apart.
        labels: the category path, root first, any depth.
        attributes: `group=value` strings.
        meta: anything else (title, brand, price...), stored as JSON text.
    """

    image: str
    sha256: str
    item_id: str
    labels: Sequence[str]
    attributes: Sequence[str] = ()
    split: str = ""
    source: str = ""
    source_url: str = ""
    width: int = 0
    height: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The row as the manifest stores it (lists, and `meta` as JSON text)."""
        return {
            "image": self.image,
            "sha256": self.sha256,
            "item_id": self.item_id,
            "labels": list(self.labels),
            "attributes": list(self.attributes),
            "split": self.split,
            "source": self.source,
            "source_url": self.source_url,
            "width": self.width,
            "height": self.height,
            "meta": json.dumps(dict(self.meta), ensure_ascii=False, default=str),
        }


def rows_to_table(rows: Iterable[ManifestRow | Mapping[str, Any]]) -> pa.Table:
    """Rows to a table of the manifest schema; plain dicts get defaults for missing columns."""
    dicts = [
        r.to_dict()
        if isinstance(r, ManifestRow)
        else {c: r.get(c, _DEFAULTS.get(c)) for c in COLUMNS}
        for r in rows
    ]
    return pa.Table.from_pylist(dicts, schema=SCHEMA)


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


@dataclass(frozen=True)
class SourceRef:
    """Where (part of) a dataset came from: the importer, its input, and when."""

    kind: str
    source: str
    imported_at: str


@dataclass(frozen=True)
class DatasetInfo:
    """`dataset.json`: what a dataset is, where it came from, and what was done to it.

    Written only by `write_info` (with the format version), read only by `read_info` (which checks
    it). Keys this version does not know are kept in `extra` and written back unchanged.
    """

    name: str = ""
    levels: tuple[str, ...] = ()
    """Level names, root first (e.g. masterCategory, subCategory, articleType)."""
    attribute_groups: tuple[str, ...] = ()
    counts: Mapping[str, Any] = field(default_factory=dict)
    """`images`, `items` and `splits` (split -> images), refreshed by every save."""
    created: str = ""
    updated: str = ""
    sources: tuple[SourceRef, ...] = ()
    import_: Mapping[str, Any] | None = None
    """The importer's kind and argument fingerprint (`import` in the file): a re-run matches it."""
    crawl: Mapping[str, Any] | None = None
    """A crawl's settings; its state lives in `crawl.db` beside the manifest."""
    derived_from: str | None = None
    """The dataset dir this one was filtered from."""
    history: tuple[Mapping[str, Any], ...] = ()
    """One entry per operation (split, filter, dedup...): op, at, args, result."""
    revision: str = ""
    """A token new at every save: a writer that read another revision than the one on disk
    lost the race to a second writer, and `Dataset.save` refuses rather than drop its change."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_history(self, op: str, args: Mapping[str, Any], result: Any) -> DatasetInfo:
        """This info plus one history entry: what was done, when, with which arguments."""
        entry = {"op": op, "at": now(), "args": dict(args), "result": result}
        return replace(self, history=(*self.history, entry))

    def to_json(self) -> dict[str, Any]:
        """The JSON object of dataset.json, format version first; unset optional keys omitted."""
        out: dict[str, Any] = {"format_version": FORMAT_VERSION, **self.extra, "name": self.name}
        out["levels"] = list(self.levels)
        out["attribute_groups"] = list(self.attribute_groups)
        out["counts"] = dict(self.counts)
        out["created"], out["updated"] = self.created, self.updated
        out["sources"] = [asdict(s) for s in self.sources]
        for key, value in (("import", self.import_), ("crawl", self.crawl),
                           ("derived_from", self.derived_from)):  # fmt: skip
            if value is not None:
                out[key] = dict(value) if isinstance(value, Mapping) else value
        out["history"] = [dict(h) for h in self.history]
        if self.revision:
            out["revision"] = self.revision
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DatasetInfo:
        """Parse a dataset.json object (its format version is checked by `read_info`)."""
        return cls(
            name=str(obj.get("name") or ""),
            levels=tuple(obj.get("levels") or ()),
            attribute_groups=tuple(obj.get("attribute_groups") or ()),
            counts=dict(obj.get("counts") or {}),
            created=str(obj.get("created") or ""),
            updated=str(obj.get("updated") or ""),
            sources=tuple(_source(s) for s in obj.get("sources") or ()),
            import_=obj.get("import"),
            crawl=obj.get("crawl"),
            derived_from=obj.get("derived_from"),
            history=tuple(obj.get("history") or ()),
            revision=str(obj.get("revision") or ""),
            extra={k: v for k, v in obj.items() if k not in INFO_KEYS},
        )


INFO_KEYS = frozenset(
    {f.name for f in fields(DatasetInfo)} - {"import_", "extra"} | {"import", "format_version"}
)
"""The keys of dataset.json that `DatasetInfo` names; any other key goes to `extra`."""


def _source(obj: Mapping[str, Any]) -> SourceRef:
    return SourceRef(str(obj.get("kind", "")), str(obj.get("source", "")),
                     str(obj.get("imported_at", "")))  # fmt: skip


#: The only image path a row may name: its own file in the content-addressed store. Paths come
#: from a file anyone can edit, so `../x`, `/etc/passwd` or another row's file are refused here,
#: where every reader and writer of the manifest passes, rather than by each consumer.
_STORE_PATH = r"^images/[0-9a-f]{2}/[0-9a-f]{64}\.[a-z0-9]{1,5}$"


def _first_bad(mask: pa.ChunkedArray | pa.Array) -> int | None:
    """The index of the first False (or null) in a boolean mask, or None when all are true."""
    import pyarrow.compute as pc

    bad = pc.invert(pc.fill_null(mask, False))
    if not pc.any(bad).as_py():
        return None
    return int(pc.index(bad, True).as_py())


def _check_nulls(table: pa.Table, where: str) -> None:
    """Refuse a null in any column, naming the first such row (before the schema cast, whose
    own error for it is a bare ValueError without the row)."""
    import pyarrow.compute as pc

    for name in COLUMNS:
        if table.column(name).null_count:
            i = _first_bad(pc.is_valid(table.column(name)))
            raise DatasetError(f"{where} row {i}: {name} is null; every row needs a {name}")


def _check_rows(table: pa.Table, where: str) -> None:
    """Refuse rows no stage can trust: an image path outside the row's own store file, a split
    name that is not one, `meta` that is not a JSON object."""
    import pyarrow.compute as pc

    image, sha = table.column("image"), table.column("sha256")
    ok = pc.and_(
        pc.match_substring_regex(image, _STORE_PATH),
        pc.equal(pc.utf8_slice_codeunits(image, 10, 74), sha),
    )
    ok = pc.and_(
        ok, pc.equal(pc.utf8_slice_codeunits(image, 7, 9), pc.utf8_slice_codeunits(sha, 0, 2))
    )
    if (i := _first_bad(ok)) is not None:
        raise DatasetError(
            f"{where} row {i}: image {image[i].as_py()!r} is not that row's file in the store "
            f"(expected images/<first two hex>/<sha256>.<ext> with the row's sha256); refusing "
            "to read a path the manifest names outside the dataset dir's own store"
        )
    split = table.column("split")
    if (i := _first_bad(pc.is_in(split, value_set=pa.array(["", *SPLITS])))) is not None:
        raise DatasetError(
            f"{where} row {i}: split {split[i].as_py()!r} is not one of '', {', '.join(SPLITS)}"
        )
    for i, text in enumerate(table.column("meta").to_pylist()):
        if not text:
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise DatasetError(f"{where} row {i}: meta is not a JSON object: {text[:60]!r}")


def conform(table: pa.Table, where: str = "items table") -> pa.Table:
    """Cast a table to the manifest schema (column order, types) and check its rows, or say
    what is wrong (`where` names the file in the message)."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DatasetError(f"{where} lacks columns {missing}")
    table = table.select(list(COLUMNS))
    _check_nulls(table, where)
    try:
        out = table.cast(SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
        raise DatasetError(f"{where} does not fit the manifest schema: {exc}") from exc
    _check_rows(out, where)
    return out


def write_items(root: Path, table: pa.Table) -> None:
    table = conform(table)
    with atomic_path(root / ITEMS_FILE) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_items(root: Path) -> pa.Table:
    path = root / ITEMS_FILE
    if not path.is_file():
        raise DatasetError(f"{root} is not a dataset dir: {ITEMS_FILE} is missing")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{path} is unreadable: {exc}") from exc
    return conform(table, str(path))


def read_info(root: Path) -> DatasetInfo:
    path = root / INFO_FILE
    if not path.is_file():
        raise DatasetError(f"{root} is not a dataset dir: {INFO_FILE} is missing")
    return parse_info(path.read_bytes(), str(path))


def parse_info(data: bytes, where: str) -> DatasetInfo:
    """dataset.json's bytes to a `DatasetInfo`, refusing a format version we do not read."""
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where} is not valid JSON: {exc}") from exc
    version = obj.get("format_version") if isinstance(obj, dict) else None
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{where} has format version {version!r}; this fashion-tagger reads version "
            f"{FORMAT_VERSION}. Re-import the data or upgrade fashion-tagger."
        )
    _check_info(obj, where)
    return DatasetInfo.from_json(obj)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


#: dataset.json's fields: what each must be, as a check and the words of the error.
_INFO_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "levels": (_is_str_list, "a list of level names (strings)"),
    "attribute_groups": (_is_str_list, "a list of attribute group names (strings)"),
    "counts": (lambda v: isinstance(v, dict), "an object of counts"),
    "created": (lambda v: isinstance(v, str), "a timestamp string"),
    "updated": (lambda v: isinstance(v, str), "a timestamp string"),
    "sources": (
        lambda v: (
            isinstance(v, list)
            and all(isinstance(s, dict) and all(isinstance(x, str) for x in s.values()) for s in v)
        ),
        "a list of objects with kind, source and imported_at strings",
    ),
    "import": (lambda v: isinstance(v, dict), "an object"),
    "crawl": (lambda v: isinstance(v, dict), "an object"),
    "derived_from": (lambda v: isinstance(v, str | dict), "a string or an object"),
    "history": (
        lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v),
        "a list of objects",
    ),
    "revision": (lambda v: isinstance(v, str), "a string"),
}


def _check_info(obj: dict[str, Any], where: str) -> None:
    """Refuse a dataset.json whose fields have the wrong shape, naming the field and what it
    should be: every stage reads these, and a wrong type would fail far from its cause."""
    for key, (ok, expected) in _INFO_FIELDS.items():
        if obj.get(key) is not None and not ok(obj[key]):
            raise DatasetError(f"{where}: {key!r} must be {expected}, not {obj[key]!r:.60}")


def write_info(root: Path, info: DatasetInfo) -> None:
    write_json_atomic(root / INFO_FILE, info.to_json())


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(conform(table), buf, compression="zstd")
    return buf.getvalue()


def read_remote(remote: Remote) -> tuple[pa.Table, DatasetInfo]:
    """The manifest of a dataset dir on object storage (dataset.json first: it names a dataset
    only once items.parquet and every image it lists are in place)."""
    data = remote.read_bytes(INFO_FILE)
    if data is None:
        raise DatasetError(
            f"{remote.url} is not a dataset dir: {INFO_FILE} is missing (import into it first)"
        )
    info = parse_info(data, f"{remote.url}/{INFO_FILE}")
    items = remote.read_bytes(ITEMS_FILE)
    if items is None:
        raise DatasetError(f"{remote.url} is not a dataset dir: {ITEMS_FILE} is missing")
    try:
        table = pq.read_table(io.BytesIO(items))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{remote.url}/{ITEMS_FILE} is unreadable: {exc}") from exc
    return conform(table, f"{remote.url}/{ITEMS_FILE}"), info


def write_remote(remote: Remote, table: pa.Table, info: DatasetInfo) -> None:
    """items.parquet, then dataset.json last: each is one PUT, which object storage applies
    whole, so a reader sees the old dataset or the new one, never a manifest naming missing rows."""
    remote.write_bytes(ITEMS_FILE, _parquet_bytes(table))
    remote.write_bytes(
        INFO_FILE, (json.dumps(info.to_json(), indent=2, ensure_ascii=False) + "\n").encode()
    )
