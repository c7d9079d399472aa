"""Streaming ingest: turn a source's records into a dataset dir, in parallel, resumably.

Every importer (and the crawler) yields `Record`s; `ingest` validates each image in worker
processes, stores it once in the content-addressed store, and writes the manifest. Memory stays
bounded: records are read lazily, a fixed number of batches is in flight, and rows are flushed to
part files under `<out>/.import/` as they come. A re-run with the same arguments skips every
record already flushed, and images already in the store are not decoded again.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fashion_tagger import _progress, storage
from fashion_tagger._cpu import usable_cores
from fashion_tagger._io import atomic_path, write_json_atomic
from fashion_tagger.dataset import images, manifest, store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.manifest import DatasetInfo, ManifestRow, SourceRef
from fashion_tagger.errors import DatasetError

STATE_DIR = ".import"
REPORT_FILE = "import_report.json"
BATCH = 128
FLUSH_ROWS = 4096


@dataclass
class Record:
    """One image of a source, with its labels. `load` is called only if the record is new.

    Attributes:
        key: stable and unique within the source (e.g. the zip entry); the resume key.
        load: returns the image bytes; may raise OSError/ValueError (recorded as skipped).
        error: a reason known before loading (e.g. "missing_image"); the record is skipped.
    """

    key: str
    labels: list[str]
    item_id: str
    load: Callable[[], bytes] | None = None
    attributes: list[str] = field(default_factory=list)
    split: str = ""
    source_url: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    detail: str = ""

    def row(self, sha256: str, ext: str, width: int, height: int, source: str) -> ManifestRow:
        """The manifest row of this record once its image is stored."""
        return ManifestRow(
            image=store.relpath(sha256, ext),
            sha256=sha256,
            item_id=self.item_id,
            labels=self.labels,
            attributes=self.attributes,
            split=self.split,
            source=source,
            source_url=self.source_url,
            width=width,
            height=height,
            meta=self.meta,
        )


@dataclass
class ImportResult:
    dataset: Dataset
    report: dict[str, Any]
    resumed: bool = False
    up_to_date: bool = False


def is_safe_relpath(rel: str) -> bool:
    """Whether `rel` (a zip entry, a manifest's image path) stays inside its root.

    Absolute paths, drive letters, backslashes and `..` parts are refused: a source must never
    make an import read (or a dataset refer to) a file outside the folder it describes.
    """
    if not rel or rel.startswith(("/", "\\")) or "\\" in rel or ":" in rel.split("/", 1)[0]:
        return False
    return ".." not in rel.split("/")


def fingerprint(kind: str, **args: Any) -> str:
    """A stable hash of an import's kind and arguments: a re-run must match it to resume."""
    text = json.dumps({"kind": kind, **args}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- worker side ------------------------------------------------------------------------------
_STORED_EXTS = tuple(dict.fromkeys(images.FORMATS.values()))


def _store_batch(root: str, batch: list[bytes]) -> list[tuple[Any, ...]]:
    """Validate and store a batch of images (in a worker, so hashing, decoding and writing run
    on every core); returns (sha, ext, w, h), or ("!", reason, detail), per image."""
    out: list[tuple[Any, ...]] = []
    for data in batch:
        sha = hashlib.sha256(data).hexdigest()
        known = _stored_info(root, sha, images.sniff_ext(data), len(data))
        if known is not None:  # stored by an earlier (interrupted) run: header only, no decode
            out.append((sha, *known))
            continue
        try:
            info = images.probe(data, sha)
        except images.ImageError as exc:
            out.append(("!", exc.reason, exc.detail[:300]))
            continue
        store.put(root, sha, info.ext, data, replace=True, durable=False)
        out.append((sha, info.ext, info.width, info.height))
    return out


def _stored_info(root: str, sha: str, ext: str | None, size: int) -> tuple[str, int, int] | None:
    """Ext and oriented size of an image already in the store (validated when stored).

    A file of the wrong length (cut short by a power loss before the sync) does not count."""
    path = store.find(root, sha, (ext,) if ext else _STORED_EXTS)
    if path is None or os.path.getsize(path) != size:
        return None
    try:
        with Image.open(path) as img:
            w, h = img.size
            # Pillow decodes a whole PNG to look for EXIF that is not in its header: skip that.
            no_exif = img.format == "PNG" and "exif" not in img.info
            orientation = 1 if no_exif else img.getexif().get(0x0112, 1)
        suffix = path.rsplit(".", 1)[1]
        return (suffix, *((h, w) if orientation in (5, 6, 7, 8) else (w, h)))
    except Exception:  # unreadable (e.g. cut short by a power loss): validate and store again
        return None


def _ready() -> int:
    return os.getpid()


def _pool(workers: int) -> ProcessPoolExecutor | None:
    """Worker processes, started now (before any progress-bar thread exists).

    `fork` where the platform has it: the import path never loads torch or CUDA, and forked
    workers start in milliseconds instead of re-importing the package as `spawn` must.
    """
    if workers <= 1:
        return None
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=get_context(method))
    for fut in [pool.submit(_ready) for _ in range(workers)]:
        fut.result()
    return pool


# -- main side --------------------------------------------------------------------------------
def _lock(path: Path, out: Path) -> Any:
    """Hold an exclusive lock on `path` while this import runs (released when the process ends):
    two imports writing one dataset dir at once would interleave their part files."""
    f = open(path, "a")  # noqa: SIM115 - kept open on purpose: the lock lives as long as the file
    try:
        import fcntl  # POSIX only; elsewhere imports are simply not guarded against each other
    except ImportError:
        return f
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise DatasetError(
            f"another import is writing to {out} right now; wait for it to finish (or stop it)."
        ) from None
    return f


class _State:
    """Part files and skipped records of an unfinished import, under `<out>/.import/`."""

    def __init__(self, out: Path, fp: str) -> None:
        self.dir = out / STATE_DIR
        state_file = self.dir / "state.json"
        self.existed = state_file.is_file()
        if self.existed:
            old = json.loads(state_file.read_text()).get("fingerprint")
            if old != fp:
                raise DatasetError(
                    f"{out} holds an unfinished import made with other arguments. Re-run it with "
                    f"the same arguments to resume, or delete {self.dir} to start over."
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.dir / "lock", out)
        write_json_atomic(state_file, {"fingerprint": fp})
        self.parts = sorted(self.dir.glob("part-*.parquet"))
        self.skipped_path = self.dir / "skipped.jsonl"

    def release(self) -> None:
        """Let another import use this dir (closing the lock file drops the lock)."""
        self._lock.close()

    def done_keys(self) -> set[str]:
        keys: set[str] = set()
        for part in self.parts:
            keys.update(pq.read_table(part, columns=["_key"]).column("_key").to_pylist())
        for entry in self.skipped():
            keys.add(entry["key"])
        return keys

    def skipped(self) -> list[dict[str, str]]:
        if not self.skipped_path.is_file():
            return []
        out = []
        for line in self.skipped_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return out

    def add_skipped(self, entries: list[dict[str, str]]) -> None:
        if entries:
            with open(self.skipped_path, "a") as f:
                f.writelines(json.dumps(e) + "\n" for e in entries)
                f.flush()
                os.fsync(f.fileno())

    def flush(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        store.sync()  # the images these rows name must be on disk before the rows are
        schema = manifest.SCHEMA.append(pa.field("_key", pa.string()))
        table = pa.Table.from_pylist(rows, schema=schema)
        path = self.dir / f"part-{len(self.parts):05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        self.parts.append(path)

    def table(self) -> pa.Table:
        if not self.parts:
            return manifest.rows_to_table([])
        return pa.concat_tables([pq.read_table(p) for p in self.parts]).drop(["_key"])


class _Pipeline:
    """Records in, stored images and flushed rows out: a bounded number of batches in flight."""

    def __init__(self, out: Path, state: _State, kind: str, workers: int) -> None:
        self.out, self.state, self.kind, self.workers = out, state, kind, workers
        self.pool = _pool(workers)
        self.in_flight: collections.deque[tuple[list[Record], Future | list]] = collections.deque()
        self.rows: list[dict[str, Any]] = []

    def submit(self, batch: list[Record], datas: list[bytes], bar: _progress.Bar) -> None:
        if self.pool is None:
            self.in_flight.append((batch, _store_batch(str(self.out), datas)))
        else:
            self.in_flight.append((batch, self.pool.submit(_store_batch, str(self.out), datas)))
        while len(self.in_flight) > 2 * self.workers:
            self.drain_one(bar)

    def drain_one(self, bar: _progress.Bar) -> None:
        batch, fut = self.in_flight.popleft()
        results = fut.result() if isinstance(fut, Future) else fut
        skipped = []
        for rec, res in zip(batch, results, strict=True):
            if res[0] == "!":
                skipped.append({"key": rec.key, "reason": res[1], "detail": res[2]})
                continue
            sha, ext, w, h = res
            self.rows.append(rec.row(sha, ext, w, h, self.kind).to_dict() | {"_key": rec.key})
        self.state.add_skipped(skipped)
        bar.advance(len(batch))
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        self.state.flush(self.rows)
        self.rows.clear()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _load(rec: Record) -> bytes | None:
    """The record's image bytes, or None with `rec.error` set to why not."""
    if rec.error is not None:
        return None
    try:
        data = rec.load() if rec.load else None
        if data is None:
            rec.error, rec.detail = "missing_image", "no image data"
    except (OSError, ValueError, KeyError) as exc:
        rec.error, rec.detail = "unreadable", str(exc)[:300]
        return None
    return data


def _run(records: Iterable[Record], pipe: _Pipeline, done: set[str], bar: _progress.Bar) -> None:
    """Feed every new record through the pipeline; rows drained so far are flushed on any exit
    (their images are stored), so a re-run skips them."""
    seen: set[str] = set()
    batch: list[Record] = []
    datas: list[bytes] = []
    pre_skipped: list[dict[str, str]] = []
    try:
        for rec in records:
            if rec.key in done:
                bar.advance()
                continue
            if rec.key in seen:
                raise DatasetError(f"importer bug: record key {rec.key!r} is not unique")
            seen.add(rec.key)
            data = _load(rec)
            if data is None:
                pre_skipped.append({"key": rec.key, "reason": rec.error, "detail": rec.detail})
                bar.advance()
                continue
            batch.append(rec)
            datas.append(data)
            if len(batch) >= BATCH:
                pipe.submit(batch, datas, bar)
                batch, datas = [], []
                pipe.state.add_skipped(pre_skipped)
                pre_skipped = []
        if batch:
            pipe.submit(batch, datas, bar)
        pipe.state.add_skipped(pre_skipped)
        while pipe.in_flight:
            pipe.drain_one(bar)
    finally:
        pipe.flush()
        pipe.close()


def _existing(out: Path, fp: str) -> ImportResult | None:
    """The finished import already in `out` if it was made with these arguments (else raise)."""
    if not (out / manifest.INFO_FILE).is_file() or (out / STATE_DIR).is_dir():
        return None
    info = manifest.read_info(out)
    if (info.import_ or {}).get("fingerprint") != fp:
        raise DatasetError(
            f"{out} already holds a dataset ({info.name!r}, imported with other "
            "arguments); choose another --out or delete it first."
        )
    report_path = out / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return ImportResult(Dataset.open(out), report, up_to_date=True)


def ingest(
    records: Iterable[Record],
    out: str | Path,
    *,
    kind: str,
    fp: str,
    name: str,
    levels: list[str],
    source: str,
    total: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    extra_info: dict[str, Any] | None = None,
) -> ImportResult:
    """Validate, store and index `records` into the dataset dir `out` (a folder or a URL).

    Args:
        kind: the importer's name, recorded in dataset.json.
        fp: `fingerprint(...)` of the import's arguments; a re-run must give the same.
        levels: names of the label levels, root first.
        source: what the data came from (a path or URL), for dataset.json and each row.
        total: number of records, when known, for the progress bar.
        workers: decoding processes (default: all cores).
    """
    args = dict(kind=kind, fp=fp, name=name, levels=levels, source=source, total=total,
                workers=workers, progress=progress, extra_info=extra_info)  # fmt: skip
    if storage.is_url(out):
        return _ingest_remote(records, storage.normalize(out).rstrip("/"), **args)
    out = Path(out)
    if (up_to_date := _existing(out, fp)) is not None:
        return up_to_date
    state = _State(out, fp)
    try:
        done = state.done_keys()
        pipe = _Pipeline(out, state, kind, workers or usable_cores())
        with _progress.bar(f"import {kind}", total=total, enabled=progress) as bar:
            _run(records, pipe, done, bar)
        table = state.table()
        skipped = list({s["key"]: s for s in state.skipped()}.values())
        reasons = collections.Counter(s["reason"] for s in skipped)
        report = {
            "kind": kind,
            "source": source,
            "imported": table.num_rows,
            "skipped": len(skipped),
            "reasons": dict(sorted(reasons.items())),
            "skipped_records": skipped,
        }
        if table.num_rows == 0:
            raise DatasetError(f"no usable image found in {source} ({len(skipped)} skipped)")
        info = DatasetInfo(
            name=name,
            levels=tuple(levels),
            sources=(SourceRef(kind, source, manifest.now()),),
            import_={"kind": kind, "fingerprint": fp},
            extra=extra_info or {},
        )
        write_json_atomic(out / REPORT_FILE, report)
        ds = Dataset.create(out, table, info)
        state.release()
        shutil.rmtree(state.dir, ignore_errors=True)
        return ImportResult(ds, report, resumed=state.existed)
    finally:
        state.release()


def _ingest_remote(records: Iterable[Record], url: str, **args: Any) -> ImportResult:
    """Import into a dataset dir on object storage: stage it in the local mirror (locked and
    resumable like any local import), then publish it there, manifest last.

    The images go first (only those the store lacks), then import_report.json, items.parquet
    and dataset.json: until that last PUT the URL holds the old dataset or none.
    """
    remote = storage.Remote.open(url)
    info_bytes = remote.read_bytes(manifest.INFO_FILE)
    if info_bytes is not None:
        info = manifest.parse_info(info_bytes, f"{url}/{manifest.INFO_FILE}")
        if (info.import_ or {}).get("fingerprint") != args["fp"]:
            raise DatasetError(
                f"{url} already holds a dataset ({info.name!r}, imported with other "
                "arguments); choose another --out or delete it first."
            )
        report = json.loads(remote.read_bytes(REPORT_FILE) or b"{}")
        return ImportResult(Dataset.open(url), report, up_to_date=True)
    stage = storage.mirror_dir(url)
    if (stage / manifest.INFO_FILE).is_file() and not (stage / STATE_DIR).is_dir():
        staged = manifest.read_info(stage)
        if (staged.import_ or {}).get("fingerprint") != args["fp"]:
            for stale in (manifest.INFO_FILE, manifest.ITEMS_FILE, REPORT_FILE):
                (stage / stale).unlink(missing_ok=True)  # images stay: content-addressed
    local = ingest(records, stage, **args)
    ds = local.dataset.copy_to(url, progress=args["progress"])
    remote.write_bytes(REPORT_FILE, json.dumps(local.report, indent=2).encode())
    return ImportResult(ds.save(), local.report, resumed=local.resumed)
