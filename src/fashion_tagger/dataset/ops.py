"""The tools that change a dataset: split and filter (dedup is in `dataset.dedup`, relevel in
`dataset.relevel`).

Each is a plain function that takes a `Dataset` and returns a new (unsaved) `Dataset` plus a small
result for printing; the caller saves. Rows are the unit of the manifest but items are the unit of
sampling: the photos of one item always move together (same split, kept or dropped together), so
no item leaks between train and evaluation data. An item whose photos carry different label paths
counts as its most common one.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fashion_tagger import storage
from fashion_tagger.dataset import fields, manifest
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError

Leaf = tuple[str, ...]


def _history(ds: Dataset, op: str, args: dict[str, Any], result: dict[str, Any]) -> tuple:
    """dataset.json's `history` plus one entry: what was done, when, with which arguments."""
    return ds.info.with_history(op, args, result).history


def _item_classes(item_ids: Sequence[str], classes: Sequence[Leaf]) -> dict[str, Leaf]:
    """Each item's class: the most common one among its rows (ties: the smallest path)."""
    per_item: dict[str, Counter] = defaultdict(Counter)
    for item, cls in zip(item_ids, classes, strict=True):
        per_item[item][cls] += 1
    return {
        item: min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        for item, counts in per_item.items()
    }


def _rng(seed: int, key: Sequence[str]) -> np.random.Generator:
    """A generator for one class: stable across runs and independent of the other classes."""
    digest = hashlib.sha256(("\x1f".join(key)).encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def _split_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    splits = table.column("split").to_pylist()
    items = table.column("item_id").to_pylist()
    out: dict[str, dict[str, int]] = {}
    for name in sorted(set(splits)):
        rows = [i for i, s in enumerate(splits) if s == name]
        out[name or "none"] = {"images": len(rows), "items": len({items[i] for i in rows})}
    return out


# -- split ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitResult:
    """What `split` did. `counts` maps split -> {"images", "items"} after the split."""

    assigned_images: int
    assigned_items: int
    kept_images: int
    forced: bool
    counts: dict[str, dict[str, int]]
    val_from_train: int = 0
    """Train images moved to val because the dataset came with a test split and no val (an
    official test split, e.g. Fashion-MNIST's, is never touched)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quota(n: int, val: float, test: float) -> tuple[int, int]:
    """Val and test items for a class of `n` items; at least one of each when it can afford it."""
    n_val = int(n * val + 0.5)
    n_test = int(n * test + 0.5)
    if val > 0 and n >= 2:
        n_val = max(n_val, 1)
    if test > 0 and n >= 3:
        n_test = max(n_test, 1)
    while n_val + n_test > max(n - 1, 0):  # always keep a train item
        if n_test > (1 if test > 0 and n >= 3 else 0) and n_test >= n_val:
            n_test -= 1
        elif n_val > (1 if val > 0 and n >= 2 else 0):
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _carve_val(
    items: Sequence[str], labels: Sequence[Leaf], splits: list[str], val: float, seed: int
) -> int:
    """Move a stratified `val` share of the train items to val, in place; returns the rows moved.

    Only items all of whose split rows are train move (an item with a test photo stays put).
    """
    splits_of: dict[str, set[str]] = defaultdict(set)
    for item, s in zip(items, splits, strict=True):
        if s:
            splits_of[item].add(s)
    rows = [i for i, s in enumerate(splits) if s == "train" and splits_of[items[i]] == {"train"}]
    leaf_of = _item_classes([items[i] for i in rows], [labels[i] for i in rows])
    by_leaf: dict[Leaf, list[str]] = defaultdict(list)
    for item, leaf in leaf_of.items():
        by_leaf[leaf].append(item)
    chosen: set[str] = set()
    for leaf in sorted(by_leaf):
        members = sorted(by_leaf[leaf])
        n_val, _ = _quota(len(members), val, 0.0)
        order = _rng(seed, leaf).permutation(len(members))
        chosen.update(members[j] for j in order[:n_val])
    moved = [i for i in rows if items[i] in chosen]
    for i in moved:
        splits[i] = "val"
    return len(moved)


def split(
    ds: Dataset, val: float, test: float, seed: int = 0, force: bool = False
) -> tuple[Dataset, SplitResult]:
    """Assign train/val/test to items, stratified on the leaf, grouped by item.

    Only rows without a split are assigned unless `force`; an unsplit photo of an item that already
    has a split joins it. The same seed on the same rows gives the same split column.

    A dataset that comes with a test split but no val (Fashion-MNIST's official train/test) gets
    its val carved out of train: a `val` share of each leaf's train items moves to val, and the
    test rows are kept as they are, without `force` (which would re-split the test rows too).

    Args:
        val: fraction of each leaf's items for validation.
        test: fraction for test; `val + test` must be below 1.
        force: re-assign every row, discarding existing splits.
    """
    for flag, v in (("--val", val), ("--test", test)):
        if not 0 <= v < 1:
            raise DatasetError(f"{flag} {v} must be a fraction between 0 and 1, e.g. {flag} 0.15")
    if val + test >= 1:
        raise DatasetError(
            f"--val {val} + --test {test} leaves nothing to train on; make their sum below 1"
        )
    items = ds.table.column("item_id").to_pylist()
    labels = [tuple(p) for p in ds.labels]
    splits = [""] * len(items) if force else ds.table.column("split").to_pylist()
    present = set(splits)
    val_from_train = 0
    if val > 0 and "val" not in present and {"train", "test"} <= present:
        val_from_train = _carve_val(items, labels, splits, val, seed)

    # An item already (partly) split keeps its split for all its photos.
    existing: dict[str, Counter] = defaultdict(Counter)
    for item, s in zip(items, splits, strict=True):
        if s:
            existing[item][s] += 1
    todo = [i for i, s in enumerate(splits) if not s]
    kept_images = len(items) - len(todo)
    new = list(splits)
    for i in todo:
        if items[i] in existing:
            new[i] = existing[items[i]].most_common(1)[0][0]

    free = [i for i in todo if not new[i]]
    leaf_of = _item_classes([items[i] for i in free], [labels[i] for i in free])
    by_leaf: dict[Leaf, list[str]] = defaultdict(list)
    for item, leaf in leaf_of.items():
        by_leaf[leaf].append(item)
    choice: dict[str, str] = {}
    for leaf in sorted(by_leaf):
        members = sorted(by_leaf[leaf])
        order = _rng(seed, leaf).permutation(len(members))
        n_val, n_test = _quota(len(members), val, test)
        for rank, j in enumerate(order):
            choice[members[j]] = (
                "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            )
    for i in free:
        new[i] = choice[items[i]]

    table = ds.table.set_column(
        ds.table.schema.get_field_index("split"), "split", pa.array(new, pa.string())
    )
    result = SplitResult(
        assigned_images=len(todo),
        assigned_items=len({items[i] for i in todo}),
        kept_images=kept_images,
        forced=force,
        counts=_split_counts(table),
        val_from_train=val_from_train,
    )
    args = {"val": val, "test": test, "seed": seed, "force": force}
    summary = {"assigned_images": len(todo), "val_from_train": val_from_train}
    history = _history(ds, "split", args, summary)
    return ds.with_table(table, history=history), result


# -- filter -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FilterResult:
    """What `filter_dataset` did: images/classes before and after, and what each step removed."""

    images_before: int
    images_after: int
    classes_before: int
    classes_after: int
    dropped_classes: list[str]
    capped_classes: int
    cap: int | None
    sampled: bool
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """The --where conditions, as (name, values)."""
    dropped_by_where: int = 0
    """Rows that failed a --where condition (dropped before the other steps)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _class_keys(ds: Dataset, level: str | None) -> list[Leaf]:
    """Each row's class: its full path (the leaf), or its path cut at the level named `level`."""
    paths = [tuple(p) for p in ds.labels]
    if level is None:
        return paths
    names = list(ds.level_names)
    if level not in names:
        raise DatasetError(
            f"--level {level!r} is not a level of this dataset; choose one of {names}"
        )
    depth = names.index(level) + 1
    return [p[:depth] for p in paths]


def _take_items(
    members: list[str], sizes: dict[str, int], quota: int, rng: np.random.Generator
) -> set[str]:
    """Whole items, in random order, until `quota` images; always at least one item."""
    taken: set[str] = set()
    count = 0
    for j in rng.permutation(len(members)):
        item = members[j]
        if count == 0 or count + sizes[item] <= quota:
            taken.add(item)
            count += sizes[item]
        if count >= quota:
            break
    return taken


def _sample_quotas(class_sizes: dict[Leaf, int], n: int) -> dict[Leaf, int]:
    """Images per class for a stratified sample of `n`: proportional (largest remainders), and
    at least one per class when `n` allows it."""
    total = sum(class_sizes.values())
    classes = sorted(class_sizes)
    exact = {c: n * class_sizes[c] / total for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    if len(classes) <= n:
        for c in classes:
            quota[c] = max(quota[c], 1)
    while sum(quota.values()) > n:  # the minimums overshot: take back from the biggest quotas
        c = max(classes, key=lambda c: (quota[c], c))
        quota[c] -= 1
    by_remainder = sorted(classes, key=lambda c: (-(exact[c] - int(exact[c])), c))
    for c in by_remainder[: max(0, n - sum(quota.values()))]:
        quota[c] += 1
    return {c: min(q, class_sizes[c]) for c, q in quota.items()}


Where = Sequence[tuple[str, Sequence[str]]]
"""Row conditions: (name, values) pairs; a row passes one when its `name` has one of the values."""


def parse_where(specs: Sequence[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`--where NAME=V1,V2` options as (name, values) pairs, in the order given.

    Values are split on commas and stripped; a repeated NAME is a second condition (rows must
    meet both), not a union: put every value of a union in one --where.
    """
    out = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        values = tuple(dict.fromkeys(v.strip() for v in rest.split(",") if v.strip()))
        if not sep or not name.strip() or not values:
            raise DatasetError(
                f"--where {spec!r}: write NAME=VALUE[,VALUE...], e.g. --where gender=Men,Women"
            )
        out.append((name.strip(), values))
    return tuple(out)


def where_mask(ds: Dataset, where: Where) -> np.ndarray:
    """Rows meeting every condition. A NAME this dataset lacks, a value no row has, or
    conditions no row meets together, are errors saying what the dataset has: a typo would
    otherwise drop every row, or none, silently."""
    keep = np.ones(len(ds), dtype=bool)
    for name, values in where:
        f = fields.field(ds, name, "--where")
        f.check_values(values, "--where")
        wanted = set(values)
        keep &= np.array([bool(wanted.intersection(vs)) for vs in f.values], dtype=bool)
    if where and not keep.any():
        said = " and ".join(f"{n}={','.join(v)}" for n, v in where)
        raise DatasetError(f"no row has {said}; each --where is met alone, but not all together")
    return keep


def _check_filter_args(
    min_per_class: int | None,
    max_per_class: int | None,
    cap_ratio: float | None,
    sample: int | None,
    where: Where = (),
) -> None:
    """Refuse filter arguments that make no sense, naming the flag to change."""
    if max_per_class is not None and cap_ratio is not None:
        raise DatasetError("give --max-per-class or --cap-ratio, not both")
    for flag, v in (("--min-per-class", min_per_class), ("--max-per-class", max_per_class),
                    ("--sample", sample)):  # fmt: skip
        if v is not None and v < 1:
            raise DatasetError(f"{flag} must be at least 1 (got {v})")
    if cap_ratio is not None and cap_ratio <= 0:
        raise DatasetError(f"--cap-ratio must be positive, e.g. 4 (got {cap_ratio})")
    if not where and all(v is None for v in (min_per_class, max_per_class, cap_ratio, sample)):
        raise DatasetError(
            "nothing to do: give --where, --min-per-class, --max-per-class, --cap-ratio or --sample"
        )


def _cap_classes(
    members: dict[Leaf, list[str]],
    sizes: dict[str, int],
    max_per_class: int | None,
    cap_ratio: float | None,
    seed: int,
) -> tuple[set[str], int | None, int]:
    """The items kept when each class is capped at `max_per_class` images (or `cap_ratio` x
    the mean class size), the cap, and how many classes it cut."""
    class_images = {c: sum(sizes[i] for i in m) for c, m in members.items()}
    cap = max_per_class
    if cap_ratio is not None and class_images:
        cap = max(1, int(cap_ratio * sum(class_images.values()) / len(class_images)))
    chosen: set[str] = set()
    capped = 0
    for c in sorted(members):
        if cap is not None and class_images[c] > cap:
            capped += 1
            chosen |= _take_items(members[c], sizes, cap, _rng(seed, c))
        else:
            chosen |= set(members[c])
    return chosen, cap, capped


def filter_dataset(
    ds: Dataset,
    min_per_class: int | None = None,
    max_per_class: int | None = None,
    cap_ratio: float | None = None,
    sample: int | None = None,
    seed: int = 0,
    level: str | None = None,
    where: Where = (),
) -> tuple[Dataset, FilterResult]:
    """Keep the rows matching `where`, drop rare classes, cap dominant ones, and/or take a
    stratified sample, by whole items.

    Steps run in that order. `where` is per row (a photo is kept when it matches, whatever the
    other photos of its item say: the conditions are on what a row carries); the later steps
    count only the rows it kept. The cap is `max_per_class` images, or `cap_ratio` x the mean class
    size (the notebook's rule against one class swamping the loss). Capping and sampling pick
    whole items at random (deterministic for `seed`) within each class.

    Args:
        min_per_class: drop classes with fewer images.
        max_per_class: keep at most this many images per class.
        cap_ratio: keep at most this multiple of the mean class size (exclusive with max).
        sample: keep about this many images in all, proportional per class, >= 1 per class.
        level: classify rows by their path cut at this level instead of by leaf.
        where: (name, values) conditions, every one to be met (see `where_mask`); a name is a
            level, an attribute group or a meta key (`dataset.fields`).
    """
    _check_filter_args(min_per_class, max_per_class, cap_ratio, sample, where)
    classes = _class_keys(ds, level)
    items = ds.table.column("item_id").to_pylist()
    before = Counter(classes)
    keep = where_mask(ds, where)
    dropped_by_where = int((~keep).sum())
    present = Counter(c for c, k in zip(classes, keep, strict=True) if k)

    dropped: list[str] = []
    if min_per_class is not None:
        rare = {c for c, k in present.items() if k < min_per_class}
        dropped = sorted(" > ".join(c) for c in rare)
        keep &= np.array([c not in rare for c in classes], dtype=bool)

    def grouped() -> tuple[dict[Leaf, list[str]], dict[str, int]]:
        rows = np.flatnonzero(keep)
        item_class = _item_classes([items[i] for i in rows], [classes[i] for i in rows])
        members: dict[Leaf, list[str]] = defaultdict(list)
        for item, cls in sorted(item_class.items()):
            members[cls].append(item)
        return members, Counter(items[i] for i in rows)

    def keep_items(chosen: set[str]) -> None:
        nonlocal keep
        keep &= np.array([it in chosen for it in items], dtype=bool)

    cap = max_per_class
    capped = 0
    if max_per_class is not None or cap_ratio is not None:
        chosen, cap, capped = _cap_classes(*grouped(), max_per_class, cap_ratio, seed)
        keep_items(chosen)

    if sample is not None:
        members, sizes = grouped()
        class_images = {c: sum(sizes[i] for i in m) for c, m in members.items()}
        if class_images and sample < sum(class_images.values()):
            quotas = _sample_quotas(class_images, sample)
            chosen = set()
            for c in sorted(members):
                if quotas[c] > 0:
                    chosen |= _take_items(members[c], sizes, quotas[c], _rng(seed + 1, c))
            keep_items(chosen)

    table = ds.table.filter(pa.array(keep))
    if table.num_rows == 0:
        raise DatasetError("the filter leaves no image; lower --min-per-class or raise --sample")
    after = Counter(c for c, k in zip(classes, keep, strict=True) if k)
    result = FilterResult(
        images_before=len(items),
        images_after=table.num_rows,
        classes_before=len(before),
        classes_after=len(after),
        dropped_classes=dropped,
        capped_classes=capped,
        cap=cap,
        sampled=sample is not None,
        where=tuple((n, tuple(v)) for n, v in where),
        dropped_by_where=dropped_by_where,
    )
    args = {
        "where": [[n, list(v)] for n, v in where],
        "min_per_class": min_per_class,
        "max_per_class": max_per_class,
        "cap_ratio": cap_ratio,
        "sample": sample,
        "seed": seed,
        "level": level,
    }
    summary = {k: v for k, v in result.to_dict().items() if k != "dropped_classes"}
    return ds.with_table(table, history=_history(ds, "filter", args, summary)), result


def relocate(ds: Dataset, out: str | Path) -> Dataset:
    """The same rows as a new dataset dir at `out` (a folder or a URL), with their images.

    Only images the rows reference are brought (hard-linked where possible); the manifest is
    written last by `save()`, so an interrupted copy leaves no dataset behind. Call `save()`.
    """
    if storage.is_url(out):
        target = storage.normalize(out).rstrip("/")
        if target == ds.url.rstrip("/"):
            return ds
        if storage.Remote.open(target).read_bytes(manifest.INFO_FILE) is not None:
            raise DatasetError(f"{target} already holds a dataset; choose another --out")
    else:
        out = Path(out)
        if not ds.is_remote and out.resolve() == ds.root.resolve():
            return ds
        if (out / manifest.ITEMS_FILE).exists() or (out / manifest.INFO_FILE).exists():
            raise DatasetError(
                f"{out} already holds a dataset; choose another --out or delete it first"
            )
    moved = ds.copy_to(out)
    return replace(moved, info=replace(moved.info, derived_from=ds.url))


def filter_steps(
    *,
    out: str | Path | None,
    drop_issues: bool,
    min_score: float | None,
    row_filters: bool,
) -> bool:
    """Check how `dataset filter`'s parts combine; True when `filter_dir` has work to do.

    `drop_issues` (the audit's flagged rows) works in place on the dataset dir, since the audit's
    label_issues.parquet and the review's decisions belong to it: it refuses `out`. The row
    filters (--where, --min-per-class, --max-per-class, --cap-ratio, --sample) write to `out`
    when given, else in place. Both may run in one call: the issues first, in place, then the
    row filters.

    Args:
        row_filters: whether any row filter was given.
    """
    if drop_issues and out is not None:
        raise DatasetError("--drop-issues works in place: drop --out")
    if min_score is not None and not drop_issues:
        raise DatasetError("--min-score goes with --drop-issues")
    return row_filters or not drop_issues


def filter_dir(
    location: str | Path, *, out: str | Path | None = None, **options: Any
) -> tuple[Dataset, FilterResult]:
    """`filter_dataset` on a dataset dir, saved in place or as a new dataset dir at `out` (which
    then holds only the images its rows name; the source is left untouched).

    Args:
        options: `filter_dataset`'s keyword arguments.

    Returns:
        The saved dataset and what the filter did.
    """
    ds, result = filter_dataset(Dataset.open(location), **options)
    if out is not None:
        ds = relocate(ds, out)
    return ds.save(), result
