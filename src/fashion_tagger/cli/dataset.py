"""`fashion-tagger dataset ...`: inspect and change a dataset dir."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fashion_tagger.cli._app import PROGRESS, WORKERS, console, dataset_app, print_json

DIR = typer.Argument(..., help="A dataset dir (written by import or crawl), local or a URL.")


@dataset_app.command("info")
def info_cmd(
    directory: str = DIR,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    top: int = typer.Option(10, "--top", help="Classes shown per level (JSON: all when 0)."),
) -> None:
    """Counts per level and class, attributes, splits and missing images.

    Example: fashion-tagger dataset info data/products --json
    """
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.dataset.info import describe

    d = describe(Dataset.open(directory), top=(top or None) if not as_json else None)
    if as_json:
        print_json(d)
        return
    console.print(
        f"[bold]{d['name']}[/]  {d['images']:,} images, {d['items']:,} items, "
        f"{d['leaves']:,} leaf classes, {d['missing_images']} missing images"
    )
    console.print("splits: " + ", ".join(f"{k} {v:,}" for k, v in d["splits"].items()))
    for level in d["levels"]:
        table = Table("class", "images", title=f"{level['name']}: {level['classes']} classes")
        for name, n in list(level["counts"].items())[:top]:
            table.add_row(name, f"{n:,}")
        console.print(table)
    if d["attributes"]:
        console.print(
            "attributes: " + ", ".join(f"{g} ({n} values)" for g, n in d["attributes"].items())
        )


JSON = typer.Option(False, "--json", help="Print one JSON object.")


def _counts_table(counts: dict[str, dict[str, int]], title: str) -> Table:
    table = Table("split", "images", "items", title=title)
    for name, c in counts.items():
        table.add_row(name, f"{c['images']:,}", f"{c['items']:,}")
    return table


@dataset_app.command("split")
def split_cmd(
    directory: str = DIR,
    val: float = typer.Option(0.1, "--val", help="Fraction of each leaf's items for validation."),
    test: float = typer.Option(0.1, "--test", help="Fraction of each leaf's items for test."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same split."),
    force: bool = typer.Option(False, "--force", help="Re-split rows that already have a split."),
    as_json: bool = JSON,
) -> None:
    """Assign train/val/test, stratified on the leaf class and grouped by item.

    Photos of one item always share a split; every leaf with 2+ items gets a val item (3+: a test
    item too). Rows that already have a split keep it unless --force. A dataset that comes with a
    test split and no val (Fashion-MNIST) gets its val carved out of train; its test rows stay.

    Example: fashion-tagger dataset split data/products --val 0.15 --test 0.15 --seed 0
    """
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.dataset.ops import split

    ds, result = split(Dataset.open(directory), val=val, test=test, seed=seed, force=force)
    ds.save()
    if as_json:
        print_json(result.to_dict())
        return
    if result.val_from_train:
        console.print(
            f"moved {result.val_from_train:,} train images to val; the existing test split is kept"
        )
    if result.forced:
        console.print(f"re-split all {result.assigned_images:,} images (--force)")
    else:
        console.print(
            f"assigned {result.assigned_images:,} unsplit images ({result.assigned_items:,} items); "
            f"{result.kept_images:,} images kept their split (--force re-splits them)"
        )
    console.print(_counts_table(result.counts, "splits"))


@dataset_app.command("dedup")
def dedup_cmd(
    directory: str = DIR,
    near: int = typer.Option(
        None, "--near", help="Also match perceptual hashes within BITS of 64 (e.g. 4)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report only; change nothing."),
    workers: int = WORKERS,
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Find duplicate photos (exact, and near with --near) and remove copies leaking across splits.

    For a pair in two splits the row in the smaller split is dropped; exact copies within one item
    keep one row. Image files stay in the store. Perceptual hashes are cached in phash.parquet.
    The perceptual hash ignores colour, so colour variants of one product shot match even at
    --near 0: review with --dry-run --json before removing.

    Example: fashion-tagger dataset dedup data/products --near 4 --dry-run --json
    """
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.dataset.dedup import dedup

    ds, result = dedup(
        Dataset.open(directory), near=near, dry_run=dry_run, workers=workers, progress=progress
    )
    if not dry_run and result.removed:
        ds.save()
    if as_json:
        print_json(result.to_dict())
        return
    console.print(
        f"{result.exact_pairs:,} exact and {result.near_pairs:,} near duplicate pairs; "
        f"{result.cross_split_pairs:,} cross splits (leakage)"
    )
    if near is not None:
        console.print(
            f"perceptual hashes: {result.hashed_now:,} computed now, the rest cached; "
            f"{result.unhashable:,} images did not decode"
        )
    by_split = ", ".join(f"{k} {v:,}" for k, v in result.removed_by_split.items()) or "none"
    verb = "would remove" if dry_run else "removed"
    console.print(f"{verb} {result.removed:,} rows ({by_split})")


@dataset_app.command("filter")
def filter_cmd(
    directory: str = DIR,
    where: list[str] = typer.Option(
        None,
        "--where",
        help="Keep rows whose level, attribute group or meta key NAME has one of the values: "
        "NAME=V1,V2 (repeat: rows must match every --where).",
    ),
    min_per_class: int = typer.Option(
        None, "--min-per-class", help="Drop classes with fewer images."
    ),
    max_per_class: int = typer.Option(None, "--max-per-class", help="Cap each class at N images."),
    cap_ratio: float = typer.Option(
        None, "--cap-ratio", help="Cap each class at R x the mean class size (e.g. 4)."
    ),
    sample: int = typer.Option(None, "--sample", help="Keep a stratified sample of N images."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same sample."),
    level: str = typer.Option(None, "--level", help="Count classes at this level (default: leaf)."),
    out: str = typer.Option(
        None, "--out", "-o", help="Write a new dataset dir here (or URL) instead of changing DIR."
    ),
    drop_issues: bool = typer.Option(
        False,
        "--drop-issues",
        help="Drop the rows `audit` flagged in label_issues.parquet that no review decided on.",
    ),
    min_score: float = typer.Option(
        None, "--min-score", help="With --drop-issues: only flagged rows scoring at least S."
    ),
    as_json: bool = JSON,
) -> None:
    """Keep rows by value (--where), drop rare classes, cap dominant ones, take a stratified
    sample (whole items), or drop the rows an audit flagged.

    The result is recorded in dataset.json's history. With --out, the source is left untouched
    (except by --drop-issues, which works in place). An unknown NAME or a value no row has is an
    error that lists the names or values the dataset has.

    Example: fashion-tagger dataset filter data/products --where masterCategory=Footwear --where gender=Men,Women --out data/footwear

    Example: fashion-tagger dataset filter data/products --min-per-class 10 --cap-ratio 4 --sample 2000 --out data/small

    After an audit: fashion-tagger dataset filter data/products --drop-issues --min-score 0.99
    """
    from fashion_tagger.dataset.ops import filter_dir, filter_steps, parse_where

    conditions = parse_where(where or [])
    row_filters = bool(conditions) or any(
        v is not None for v in (min_per_class, max_per_class, cap_ratio, sample)
    )
    run_filter = filter_steps(
        out=out, drop_issues=drop_issues, min_score=min_score, row_filters=row_filters
    )
    if drop_issues:
        _drop_issues(directory, min_score, as_json and not run_filter)
    if not run_filter:
        return
    ds, result = filter_dir(
        directory,
        out=out,
        where=conditions,
        min_per_class=min_per_class,
        max_per_class=max_per_class,
        cap_ratio=cap_ratio,
        sample=sample,
        seed=seed,
        level=level,
    )
    if as_json:
        print_json(result.to_dict() | {"out": ds.url})
        return
    console.print(
        f"{result.images_before:,} -> {result.images_after:,} images, "
        f"{result.classes_before:,} -> {result.classes_after:,} classes; written to {ds.url}"
    )
    if result.dropped_by_where:
        console.print(f"--where dropped {result.dropped_by_where:,} rows")
    if result.dropped_classes:
        console.print(f"dropped {len(result.dropped_classes)} rare classes")
    if result.capped_classes:
        console.print(f"capped {result.capped_classes} classes at {result.cap:,} images")


@dataset_app.command("relevel")
def relevel_cmd(
    directory: str = DIR,
    levels: str = typer.Option(
        ...,
        "--levels",
        help="The new label path, root first: level, attribute group or meta key names, "
        "comma-separated (e.g. gender or gender,articleType).",
    ),
    drop_missing: bool = typer.Option(
        False,
        "--drop-missing",
        help="Drop rows without exactly one value of each name (default: refuse, with counts).",
    ),
    out: str = typer.Option(
        None, "--out", "-o", help="Write a new dataset dir here (or URL) instead of changing DIR."
    ),
    as_json: bool = JSON,
) -> None:
    """Rebuild each row's label path from any of its levels and attribute groups: choose the
    target (e.g. gender) after import.

    The old path stays in each row's meta (label_history), old levels off the new path stay
    usable by name (meta former_levels), an attribute group that becomes a level leaves the
    attributes, and dataset.json records the change in its history.

    Example: fashion-tagger dataset relevel data/footwear --levels gender
    """
    from fashion_tagger.dataset.relevel import relevel_dir

    ds, result = relevel_dir(directory, levels, drop_missing=drop_missing, out=out)
    if as_json:
        print_json(result.to_dict() | {"out": ds.url})
        return
    classes = ", ".join(f"{k} ({v:,} classes)" for k, v in result.classes_per_level.items())
    console.print(
        f"levels {' > '.join(result.levels_before) or 'none'} -> {' > '.join(result.levels_after)}"
        f": {classes}; {result.changed:,} of {result.images_after:,} paths changed; "
        f"written to {ds.url}"
    )
    if result.dropped:
        console.print(f"dropped {result.dropped:,} rows without one value of every level")


def _drop_issues(directory: str, min_score: float | None, as_json: bool) -> None:
    from fashion_tagger.curation.relabel import drop_issues

    result = drop_issues(directory, min_score=min_score)
    if as_json:
        print_json(result.to_dict())
        return
    kinds = ", ".join(f"{k} {v:,}" for k, v in result.dropped_by_kind.items()) or "none"
    console.print(
        f"dropped {result.dropped:,} rows ({kinds}); {result.kept_decided:,} flagged rows kept "
        f"because reviewed; {result.images_before:,} -> {result.images_after:,} images"
    )


@dataset_app.command("export")
def export_cmd(
    directory: str = DIR,
    fmt: str = typer.Option(..., "--format", "-f", help="folders, zip, hdf5 or webdataset."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder or file to write (must not exist)."),
    size: int = typer.Option(
        None, "--size", help="Fit in SxS, pad square on white, JPEG (hdf5 default: 64)."
    ),
    grayscale: bool = typer.Option(False, "--grayscale", help="One channel instead of three."),
    split_name: str = typer.Option(None, "--split", help="Export only this split."),
    layout: str = typer.Option(
        "imagefolder",
        "--layout",
        help="folders: imagefolder, or vinted-notebook (<name>_<split>/<class>/<item id>.jpeg "
        "and a dated zip).",
    ),
    shard_size: str = typer.Option(
        "256MB", "--shard-size", help="webdataset: the most bytes per tar shard (256MB, 1GB)."
    ),
    workers: int = WORKERS,
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Export as an ImageFolder tree, a zip of it, an HDF5 file (train/val/test arrays), or
    WebDataset tar shards for streaming training at scale.

    Example: fashion-tagger dataset export data/products --format webdataset --shard-size 256MB --out shards/
    """
    if fmt == "webdataset":
        from fashion_tagger.dataset.webdataset import export_webdataset

        shards = export_webdataset(
            directory, out, shard_size=shard_size, split=split_name, progress=progress
        )
        if as_json:
            print_json(shards.to_dict())
            return
        console.print(
            f"exported {shards.samples:,} samples in {len(shards.shards):,} shards to {shards.path}"
            + (f" ({shards.failed:,} images missing)" if shards.failed else "")
        )
        return
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.dataset.export import export

    result = export(
        Dataset.open(directory),
        fmt,
        out,
        size=size,
        grayscale=grayscale,
        split=split_name,
        workers=workers,
        progress=progress,
        layout=layout,
    )
    if as_json:
        print_json(result.to_dict())
        return
    console.print(
        f"exported {result.images:,} images of {result.classes:,} classes to {result.path}"
        + (f" ({result.failed:,} failed to decode)" if result.failed else "")
    )
