"""`dataset dedup`: exact duplicates by sha256, near duplicates by perceptual hash.

Perceptual hashes (64-bit pHash) are computed in parallel once and cached in the dataset dir
(`phash.parquet`, keyed by sha256: images never change). Near pairs are found by multi-index
hashing, not by comparing every pair. A pair that crosses splits is leakage: the copy in the
smaller split is dropped. Rows are removed; image files are never deleted from the store.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashion_tagger import _progress
from fashion_tagger._cpu import usable_cores
from fashion_tagger._io import atomic_path
from fashion_tagger.dataset import manifest
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.ops import _history
from fashion_tagger.errors import DatasetError

PHASH_FILE = "phash.parquet"
"""Perceptual-hash cache in the dataset dir, keyed by sha256 (images never change)."""


def _phash_batch(paths: list[str]) -> list[int | None]:
    """Worker: 64-bit perceptual hash of each image (None if it does not decode)."""
    import imagehash

    from fashion_tagger.dataset.images import ImageError, decode

    out: list[int | None] = []
    for p in paths:
        try:
            out.append(int(str(imagehash.phash(decode(p, size=64))), 16))
        except (ImageError, OSError):
            out.append(None)
    return out


def phashes(
    ds: Dataset, workers: int | None = None, progress: bool = True
) -> tuple[dict[str, int], int]:
    """The perceptual hash of every image, by sha256, computed in parallel and cached.

    Returns the hashes and how many were computed now (the rest came from `phash.parquet`).
    Images that do not decode have no hash.
    """
    root = ds.local_images(progress=progress)  # a remote dataset: hash the mirror's files
    cache_path = root / PHASH_FILE
    cached: dict[str, int] = {}
    if cache_path.is_file():
        try:
            t = pq.read_table(cache_path)
            cached = dict(
                zip(t.column("sha256").to_pylist(), t.column("phash").to_pylist(), strict=True)
            )
        except (pa.ArrowInvalid, OSError, KeyError):
            cached = {}  # a broken cache is rebuilt, never trusted
    path_of: dict[str, str] = {}
    for sha, rel in zip(
        ds.table.column("sha256").to_pylist(), ds.table.column("image").to_pylist(), strict=True
    ):
        if sha not in cached:
            path_of.setdefault(sha, str(root / rel))
    todo = sorted(path_of)
    computed: dict[str, int] = {}
    if todo:
        workers = max(1, min(workers or usable_cores(), len(todo) // 64 or 1))
        chunks = [todo[i : i + 64] for i in range(0, len(todo), 64)]
        pool = (
            ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None
        )
        try:
            with _progress.bar("perceptual hashes", total=len(todo), enabled=progress) as bar:
                results = (
                    pool.map(_phash_batch, [[path_of[s] for s in c] for c in chunks])
                    if pool
                    else (_phash_batch([path_of[s] for s in c]) for c in chunks)
                )
                for chunk, hashes in zip(chunks, results, strict=True):
                    computed.update(
                        {s: h for s, h in zip(chunk, hashes, strict=True) if h is not None}
                    )
                    bar.advance(len(chunk))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        merged = {**cached, **computed}
        table = pa.table(
            {
                "sha256": pa.array(list(merged), pa.string()),
                "phash": pa.array(list(merged.values()), pa.uint64()),
            }
        )
        with atomic_path(cache_path) as tmp:
            pq.write_table(table, tmp)
        cached = merged
    wanted = set(ds.table.column("sha256").to_pylist())
    return {s: h for s, h in cached.items() if s in wanted}, len(todo)


def near_pairs(hashes: np.ndarray, bits: int) -> list[tuple[int, int, int]]:
    """Index pairs (i < j, distance) of 64-bit hashes within Hamming distance `bits`.

    Multi-index hashing: split the 64 bits into `bits + 1` chunks; two hashes within `bits` of
    each other agree exactly on at least one chunk (pigeonhole), so only hashes sharing a chunk
    value are compared: near-linear on real data instead of all n^2 pairs.
    """
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    if n < 2 or bits < 0:
        return []
    m = min(bits + 1, 64)
    bounds = np.linspace(0, 64, m + 1).astype(int)
    found: set[tuple[int, int]] = set()
    out: list[tuple[int, int, int]] = []
    idx = np.arange(n)
    for lo, hi in itertools.pairwise(bounds):
        mask = np.uint64((1 << int(hi - lo)) - 1)
        keys = (h >> np.uint64(lo)) & mask
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts, ends, strict=True):
            if e - s < 2:
                continue
            group = idx[order[s:e]]
            a, b = np.triu_indices(len(group), k=1)
            ia, ib = group[a], group[b]
            dist = np.bitwise_count(h[ia] ^ h[ib])
            for i, j, d in zip(ia[dist <= bits], ib[dist <= bits], dist[dist <= bits], strict=True):
                key = (int(min(i, j)), int(max(i, j)))
                if key not in found:
                    found.add(key)
                    out.append((*key, int(d)))
    return sorted(out)


@dataclass(frozen=True)
class DedupResult:
    """What `dedup` found and did. `pairs` lists every duplicate pair of rows with its action."""

    exact_pairs: int
    near_pairs: int
    cross_split_pairs: int
    removed: int
    removed_by_split: dict[str, int]
    hashed_now: int
    unhashable: int
    dry_run: bool
    pairs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dedup(
    ds: Dataset,
    near: int | None = None,
    dry_run: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[Dataset, DedupResult]:
    """Find exact (sha256) and near (perceptual hash) duplicate photos; remove leaking copies.

    A pair in two splits leaks evaluation data into training: the row in the split with fewer
    images is dropped (so val/test lose their copies of train photos). Exact copies of one item's
    photo in the same split keep one row. Other pairs are only reported. Image files stay in the
    store: other rows may share them.

    Args:
        near: also match perceptual hashes within this many bits (of 64); None: exact only.
        dry_run: report, but return the dataset unchanged.
    """
    if near is not None and not 0 <= near <= 32:
        raise DatasetError(f"--near {near} must be between 0 and 32 bits (e.g. --near 4)")
    shas = ds.table.column("sha256").to_pylist()
    splits = ds.table.column("split").to_pylist()
    items = ds.table.column("item_id").to_pylist()
    paths = ds.table.column("image").to_pylist()
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(shas):
        rows_of[s].append(i)

    candidates: list[tuple[int, int, str, int]] = []  # (row a, row b, kind, distance)
    for rows in rows_of.values():
        for x in range(len(rows)):
            for y in range(x + 1, len(rows)):
                candidates.append((rows[x], rows[y], "exact", 0))
    hashed_now = unhashable = 0
    if near is not None:
        hashes, hashed_now = phashes(ds, workers=workers, progress=progress)
        unique = sorted(rows_of)
        known = [s for s in unique if s in hashes]
        unhashable = len(unique) - len(known)
        arr = np.array([hashes[s] for s in known], dtype=np.uint64)
        for a, b, d in near_pairs(arr, near):
            for ra in rows_of[known[a]]:
                for rb in rows_of[known[b]]:
                    candidates.append((min(ra, rb), max(ra, rb), "near", d))

    size = Counter(splits)
    priority = {name: k for k, name in enumerate(manifest.SPLITS)}

    def rank(split_name: str) -> tuple[int, int]:  # larger ranks keep their rows
        return (size[split_name], -priority.get(split_name, len(priority)))

    drop: set[int] = set()
    pairs: list[dict[str, Any]] = []
    cross = 0
    for a, b, kind, d in sorted(candidates):
        action = "kept"
        if splits[a] != splits[b]:
            cross += 1
            loser = a if rank(splits[a]) < rank(splits[b]) else b
            drop.add(loser)
            action = f"dropped {'a' if loser == a else 'b'} ({splits[loser] or 'none'})"
        elif kind == "exact" and items[a] == items[b]:
            drop.add(b)
            action = "dropped b (same item)"
        pairs.append(
            {
                "kind": kind,
                "distance": d,
                "a": {"image": paths[a], "item_id": items[a], "split": splits[a]},
                "b": {"image": paths[b], "item_id": items[b], "split": splits[b]},
                "action": action,
            }
        )
    removed_by_split = Counter((splits[i] or "none") for i in drop)
    result = DedupResult(
        exact_pairs=sum(1 for c in candidates if c[2] == "exact"),
        near_pairs=sum(1 for c in candidates if c[2] == "near"),
        cross_split_pairs=cross,
        removed=len(drop),
        removed_by_split=dict(sorted(removed_by_split.items())),
        hashed_now=hashed_now,
        unhashable=unhashable,
        dry_run=dry_run,
        pairs=pairs,
    )
    if dry_run or not drop:
        return ds, result
    keep = np.array([i not in drop for i in range(len(shas))])
    summary = {k: v for k, v in result.to_dict().items() if k != "pairs"}
    history = _history(ds, "dedup", {"near": near}, summary)
    return ds.with_table(ds.table.filter(pa.array(keep)), history=history), result
