"""`dataset export --format webdataset`: tar shards for streaming training at scale.

A training job that streams from object storage reads large sequential files, not millions of
small ones: WebDataset's convention is plain POSIX tar shards where the files of one sample share
a key. Each sample here is `<key>.<ext>` (the stored image bytes, untouched: `jpg`, `png`, ...)
and `<key>.json` (label path, attributes, split, item id, image sha256, manifest path). Beside
the shards: `index.json` (every shard with its split, sample count and bytes), `taxonomy.json`
(the category tree, as a run dir stores it) and a copy of `dataset.json`.

A shard never mixes splits, so `train` shards stream alone. Shards are written with only the
standard library (`tarfile`), each to a temp file renamed when complete, and `index.json` is
written last: a reader that finds it finds every shard it lists. The members carry fixed
metadata (mtime 0, root owner), so the same dataset exports to byte-identical shards.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from fashion_tagger import _progress
from fashion_tagger._io import atomic_path, write_json_atomic
from fashion_tagger.dataset import manifest
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError, FashionTaggerError

INDEX_FILE = "index.json"
TAXONOMY_FILE = "taxonomy.json"
SHARD_PATTERN = "shard-{:06d}.tar"
FORMAT_VERSION = 1
SPLIT_ORDER = ("train", "val", "test", "")
_BLOCK = 512
_SAMPLE_COLUMNS = ("image", "sha256", "item_id", "labels", "attributes", "split", "source")
"""What each sample's JSON holds: the manifest columns that describe it."""
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


class ShardSizeError(FashionTaggerError):
    """A `--shard-size` that is not a size."""


def parse_size(value: str | int) -> int:
    """`256MB`, `1GB`, `500kB`, `64MiB`, `1.5GB` or a plain byte count to bytes.

    Decimal units (kB, MB, GB) are powers of 1000, binary ones (KiB, MiB, GiB) of 1024, as
    `du --si` and `du` print them; the unit's case does not matter.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        unit = m.group(2).lower() if m else ""
        if not m or unit not in _UNITS:
            raise ShardSizeError(
                f"--shard-size {value!r} is not a size; give one like 256MB, 1GB or 500kB"
            )
        size = int(Decimal(m.group(1)) * _UNITS[unit])  # exact: no float rounding
    if size < 1:
        raise ShardSizeError(f"--shard-size {value!r} must be more than 0 bytes, e.g. 256MB")
    return size


def _member_bytes(n: int) -> int:
    """Bytes a file of `n` bytes takes in a tar: a header block plus its blocks."""
    return _BLOCK + -(-n // _BLOCK) * _BLOCK


def _tar_bytes(members: int) -> int:
    """The size of a tar file whose members take `members` bytes: two end blocks, then padded
    to tarfile's record size."""
    record = tarfile.RECORDSIZE
    return -(-(members + 2 * _BLOCK) // record) * record


@dataclass(frozen=True)
class WebDatasetExport:
    """What `export_webdataset` wrote: where, how many samples, and the shards."""

    path: str
    samples: int
    failed: int
    shards: list[dict[str, Any]] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    shard_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def _ordered_rows(ds: Dataset, split: str | None) -> list[int]:
    """Rows to export, grouped by split (train, val, test, none), manifest order within."""
    splits = ds.table.column("split").to_pylist()
    if split is not None:
        rows = [i for i, s in enumerate(splits) if s == split]
        if not rows:
            have = sorted({s or "none" for s in splits})
            raise DatasetError(f"split {split!r} has no rows; this dataset has {have}")
        return rows
    rank = {s: k for k, s in enumerate(SPLIT_ORDER)}
    return sorted(range(len(splits)), key=lambda i: (rank.get(splits[i], len(rank)), i))


def _samples(
    ds: Dataset, rows: list[int], failed: list[int]
) -> Iterator[tuple[str, bytes, str, bytes]]:
    """(key, image bytes, image ext, JSON bytes) per row; unreadable images are counted."""
    cols = {c: ds.table.column(c).to_pylist() for c in _SAMPLE_COLUMNS}
    for i in rows:
        row = {c: cols[c][i] for c in _SAMPLE_COLUMNS}
        try:
            data = (ds.root / row["image"]).read_bytes()
        except OSError:
            failed.append(i)
            continue
        ext = Path(row["image"]).suffix.lstrip(".").lower() or "jpg"
        meta = json.dumps(row, ensure_ascii=False).encode()
        yield f"{i:09d}", data, ext, meta


def _write_shard(out: Path, name: str, members: list[tuple[str, bytes]]) -> int:
    """One tar shard, written atomically; returns its size in bytes."""
    with atomic_path(out / name) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            _add(tar, member, data)
    return (out / name).stat().st_size


def _write_shards(
    ds: Dataset, rows: list[int], out: Path, limit: int, bar: _progress.Bar
) -> tuple[list[dict[str, Any]], int]:
    """Fill shards up to `limit` bytes each (one sample at least), one split per shard."""
    shards: list[dict[str, Any]] = []
    failed: list[int] = []
    splits = ds.table.column("split").to_pylist()
    members: list[tuple[str, bytes]] = []
    split, samples, size = "", 0, 0

    def flush() -> None:
        if samples:
            name = SHARD_PATTERN.format(len(shards))
            nbytes = _write_shard(out, name, members)
            shards.append({"name": name, "split": split, "samples": samples, "bytes": nbytes})

    for key, data, ext, meta in _samples(ds, rows, failed):
        need = _member_bytes(len(data)) + _member_bytes(len(meta))
        row_split = splits[int(key)]
        if samples and (row_split != split or _tar_bytes(size + need) > limit):
            flush()
            members, samples, size = [], 0, 0
        members += [(f"{key}.{ext}", data), (f"{key}.json", meta)]
        split, samples, size = row_split, samples + 1, size + need
        bar.advance()
    flush()
    bar.advance(len(failed))
    return shards, len(failed)


def export_webdataset(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    shard_size: str | int = "256MB",
    split: str | None = None,
    progress: bool = False,
) -> WebDatasetExport:
    """Write a dataset dir (or one split of it) as WebDataset tar shards in `out_dir`.

    Args:
        shard_size: the most bytes a shard holds (`256MB`, `1GB`, `500kB`); a single larger
            image still gets a shard of its own.
        split: export only this split; default every row, shards grouped by split.

    Example:
        >>> export_webdataset("data/products", "shards/products", shard_size="256MB")
    """
    limit = parse_size(shard_size)
    ds = Dataset.open(dataset_dir)
    out = Path(out_dir)
    if (out / INDEX_FILE).exists() or (out.is_dir() and any(out.glob("shard-*.tar"))):
        raise DatasetError(f"{out} already holds shards; choose another --out or delete it first")
    out.mkdir(parents=True, exist_ok=True)
    rows = _ordered_rows(ds, split)
    with _progress.bar("export webdataset", total=len(rows), enabled=progress) as bar:
        shards, failed = _write_shards(ds, rows, out, limit, bar)
    split_counts: dict[str, int] = {}
    for s in shards:
        key = s["split"] or "none"
        split_counts[key] = split_counts.get(key, 0) + s["samples"]
    write_json_atomic(out / TAXONOMY_FILE, ds.taxonomy.to_dict())
    shutil.copyfile(ds.root / manifest.INFO_FILE, out / manifest.INFO_FILE)
    index = {
        "format": "webdataset",
        "format_version": FORMAT_VERSION,
        "dataset": ds.name,
        "samples": sum(s["samples"] for s in shards),
        "failed": failed,
        "shard_size": limit,
        "splits": split_counts,
        "attribute_names": ds.attribute_names,
        "shards": shards,
    }
    write_json_atomic(out / INDEX_FILE, index)  # last: it vouches for every shard above
    return WebDatasetExport(
        path=str(out),
        samples=index["samples"],
        failed=failed,
        shards=shards,
        splits=split_counts,
        shard_size=limit,
    )
