"""`fashion-tagger label`: auto-label photos with a trained model into a dataset dir.

The garment-classifier recipe: train on what is labelled, then tag the photos nobody labelled
(a crawl of another shop, a folder of scraped images) and keep the answers the model is sure of.
Each photo becomes a row of an ordinary dataset dir (content-addressed image, items.parquet,
dataset.json) with `source="predicted"` and the predicted path and its confidence in `meta`.
Rows at or above `min_confidence` are labelled with the predicted path; the others stay
unlabelled (`labels=[]`) and join `label_issues.parquet` as `kind="low_confidence"`, the queue
of the review page. `dataset relabel` with accepted decisions turns them into labelled rows.
Re-running over the same dataset dir adds only photos whose bytes it does not hold yet.
The review page itself is `curation.review`; the CLI writes it after this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fashion_tagger import _progress
from fashion_tagger.curation import relabel as issues
from fashion_tagger.dataset import images, manifest, store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError, FashionTaggerError
from fashion_tagger.inference.predict import expand_inputs
from fashion_tagger.inference.tagger import Prediction, Tagger
from fashion_tagger.taxonomy import Taxonomy

SOURCE = "predicted"
DEFAULT_MIN_CONFIDENCE = 0.9
"""The default --min-confidence, chosen by measurement (BENCHMARKS.md, Auto-labelling): with
`make demo`'s model (frozen Lite0 + unified head, label smoothing 0.1), its temperatures fitted
on val, 0.9 accepted 60 % of 6,645 unseen product photos at 96.7 % path precision (99.6 / 98.8 /
96.7 % per level); 0.95 accepted 40 % at 97.7 %, 0.8 accepted 73 % at 94.0 %."""
LOW_CONFIDENCE = "low_confidence"
TAXONOMY_KEY = "taxonomy"
"""dataset.json key of the labelling model's taxonomy (a `Taxonomy.to_dict()`)."""
_QUEUE_SCHEMA = pa.schema(
    [issues.ISSUES_SCHEMA.field(name) for name in (*issues.REQUIRED, "split", "sha256")]
)
"""The queue's columns of `label_issues.parquet` (the others stay null)."""


@dataclass
class LabelSummary:
    """What one `label` run did.

    Attributes:
        photos: image files found in the inputs.
        added: new rows written (labelled + queued).
        labelled: rows at or above `min_confidence`, labelled with the predicted path.
        queued: rows under it, left unlabelled and queued for review.
        already: photos whose bytes the dataset dir held already (skipped).
        skipped: unreadable photos, each {"file", "reason", "detail"}.
        review_page: the review page written for the queue (by the caller), if any.
    """

    out: str
    run: str
    min_confidence: float
    photos: int = 0
    added: int = 0
    labelled: int = 0
    queued: int = 0
    already: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    review_page: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Photo:
    file: Path
    item_id: str
    data: bytes
    info: images.ImageInfo


def _item_id(file: Path, roots: Sequence[Path]) -> str:
    """The file's path below the input folder it came from, without extension (as `import
    folders` names items); a file given directly is named by its stem."""
    for root in roots:
        if root.is_dir() and file.is_relative_to(root):
            return file.relative_to(root).with_suffix("").as_posix()
    return file.stem


def _read(
    files: Sequence[Path], roots: Sequence[Path], known: set[str], summary: LabelSummary
) -> list[_Photo]:
    """Read and validate a batch; drop photos already in the dataset or seen in this run."""
    out = []
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as exc:
            summary.skipped.append({"file": str(f), "reason": "unreadable", "detail": str(exc)})
            continue
        sha = hashlib.sha256(data).hexdigest()
        if sha in known:
            summary.already += 1
            continue
        try:
            info = images.probe(data, sha)
        except images.ImageError as exc:
            summary.skipped.append({"file": str(f), "reason": exc.reason, "detail": exc.detail})
            continue
        known.add(sha)
        out.append(_Photo(f, _item_id(f, roots), data, info))
    return out


def _row(photo: _Photo, pred: Prediction, rel: str, min_confidence: float) -> manifest.ManifestRow:
    """One manifest row: the path when confident enough, else unlabelled (to review)."""
    confidence = min(1.0, max(0.0, float(pred.top_k[0]["score"])))
    accepted = confidence >= min_confidence
    meta = {
        "file": photo.file.name,
        "predicted": pred.labels,
        "confidence": confidence,
        "level_scores": {p["level"]: p["score"] for p in pred.path},
        "predicted_attributes": [a["name"] for a in pred.attributes],
        "min_confidence": min_confidence,
        "auto_labelled": accepted,
    }
    return manifest.ManifestRow(
        image=rel,
        sha256=photo.info.sha256,
        item_id=photo.item_id,
        labels=pred.labels if accepted else [],
        source=SOURCE,
        source_url=str(photo.file),
        width=photo.info.width,
        height=photo.info.height,
        meta=meta,
    )


def _open_out(out: Path, levels: Sequence[str]) -> Dataset | None:
    """The dataset dir to add to (None when new); its levels must be the model's."""
    if not (out / manifest.INFO_FILE).is_file():
        if out.exists() and not out.is_dir():
            raise DatasetError(f"--out {out} is a file; give a folder for the dataset dir")
        return None
    ds = Dataset.open(out)
    have = [n for n in ds.level_names if n]
    if have and list(levels[: len(have)]) != have:
        raise DatasetError(
            f"{out} has levels {have} but the model predicts {list(levels)}; "
            "label into another --out (a new dataset dir)"
        )
    return ds


def _save(
    out: Path,
    ds: Dataset | None,
    rows: list[manifest.ManifestRow],
    taxonomy: Taxonomy,
    args: dict[str, Any],
) -> Dataset:
    """Append `rows` to the dataset dir (creating it); dataset.json records the run as a source,
    a history entry, and the model's taxonomy (`taxonomy`: the paths a queued row may take,
    even those no labelled row has yet)."""
    new = manifest.rows_to_table(rows)
    ref = manifest.SourceRef(SOURCE, str(args["run"]), manifest.now())
    labelled = sum(bool(r.labels) for r in rows)
    result = {"rows": len(rows), "labelled": labelled, "queued": len(rows) - labelled}
    levels = tuple(taxonomy.level_names)
    if ds is None:
        info = manifest.DatasetInfo(
            name=out.resolve().name,
            levels=levels,
            sources=(ref,),
            extra={TAXONOMY_KEY: taxonomy.to_dict()},
        )
        return Dataset.create(out, new, info.with_history("label", args, result))
    ds = ds.with_table(
        pa.concat_tables([ds.table, new]),
        levels=levels,
        sources=(*ds.info.sources, ref),
        extra={**ds.info.extra, TAXONOMY_KEY: taxonomy.to_dict()},
    )
    return ds.with_history("label", args, result).save()


def low_confidence_queue(ds: Dataset) -> pa.Table:
    """The review queue of a dataset dir: every predicted row still unlabelled and not yet
    reviewed, with the predicted path as the suggestion and `score` = 1 - confidence."""
    rows = []
    table = ds.table
    for i, (labels, source) in enumerate(
        zip(ds.labels, table.column("source").to_pylist(), strict=True)
    ):
        if source != SOURCE or labels:
            continue
        meta = ds.meta(i)
        if "review" in meta:  # rejected by a reviewer: decided, not queued again
            continue
        scores = meta.get("level_scores") or {}
        rows.append(
            {
                "item_id": table.column("item_id")[i].as_py(),
                "image": table.column("image")[i].as_py(),
                "given": [],
                "suggested": list(meta.get("predicted") or []),
                "score": 1.0 - float(meta.get("confidence", 0.0)),
                "kind": LOW_CONFIDENCE,
                # where the model doubts most along its path
                "level": min(scores, key=scores.get) if scores else None,
                "is_issue": True,
                "split": table.column("split")[i].as_py(),
                "sha256": table.column("sha256")[i].as_py(),
            }
        )
    return issues.conform_issues(pa.Table.from_pylist(rows, schema=_QUEUE_SCHEMA))


def write_queue(ds: Dataset) -> tuple[Path, int]:
    """Refresh the low-confidence rows of `label_issues.parquet`, keeping the audit's rows.

    The low-confidence rows are rebuilt from the manifest, so a row labelled or rejected by
    `dataset relabel` leaves the queue; rows of other kinds stay as the audit wrote them.
    Returns the file and the queue's length.
    """
    queue = low_confidence_queue(ds)
    path = issues.issues_path(ds.root)
    if path.is_file():
        old = issues.read_issues(ds.root)
        old = old.filter(pc.invert(pc.equal(old.column("kind"), LOW_CONFIDENCE)))
        table = pa.concat_tables([old, queue.replace_schema_metadata(old.schema.metadata)])
    else:
        table = queue
    order = pc.sort_indices(table, [("is_issue", "descending"), ("score", "descending")])
    return issues.write_issues(ds.root, table.take(order)), queue.num_rows


def label(
    run_dir: str | Path,
    paths: Sequence[str | Path],
    out_dataset_dir: str | Path,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    *,
    batch_size: int = 32,
    backend: str = "auto",
    progress: bool = True,
) -> LabelSummary:
    """Predict every photo of `paths` with the model of `run_dir` and add it to a dataset dir.

    Args:
        paths: files, folders (walked for images) and globs, as `predict` takes them.
        out_dataset_dir: the dataset dir to create or add to.
        min_confidence: rows whose path confidence (the product of its levels' probabilities,
            after the run's temperatures: a probability when the run is calibrated) is at least
            this are labelled; the others are queued for review (`label_issues.parquet`, kind
            "low_confidence").

    Example:
        >>> label("runs/products", ["scraped/"], "data/scraped", min_confidence=0.9).queued
        12
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise FashionTaggerError(f"--min-confidence must be in [0, 1], not {min_confidence}")
    if batch_size < 1:
        raise FashionTaggerError("--batch-size must be 1 or more")
    out = Path(out_dataset_dir)
    files = expand_inputs(paths)
    if not files:
        raise FashionTaggerError(f"no images found in {', '.join(map(str, paths))}")
    tagger = Tagger.load(run_dir, backend=backend)
    levels = list(tagger.spec.level_names)
    ds = _open_out(out, levels)
    summary = LabelSummary(out=str(out), run=str(run_dir), min_confidence=min_confidence)
    summary.photos = len(files)
    known = set(ds.table.column("sha256").to_pylist()) if ds is not None else set()
    roots = [Path(p) for p in paths]
    rows: list[manifest.ManifestRow] = []
    with _progress.bar("labelling", total=len(files), enabled=progress) as bar:
        for start in range(0, len(files), batch_size):
            batch = files[start : start + batch_size]
            photos = _read(batch, roots, known, summary)
            preds = tagger.predict([p.data for p in photos], batch_size=batch_size, top_k=1)
            for photo, pred in zip(photos, preds, strict=True):
                if pred.error is not None:
                    summary.skipped.append(
                        {"file": str(photo.file), "reason": "unreadable", "detail": pred.error}
                    )
                    continue
                rel = store.put(out, photo.info.sha256, photo.info.ext, photo.data, durable=False)
                rows.append(_row(photo, pred, rel, min_confidence))
            bar.advance(len(batch))
    summary.added = len(rows)
    summary.labelled = sum(bool(r.labels) for r in rows)
    summary.queued = summary.added - summary.labelled
    if not rows:
        return summary
    store.sync()  # the images must be on disk before the manifest names them
    args = {
        "run": str(run_dir),
        "inputs": [str(p) for p in paths],
        "min_confidence": min_confidence,
    }
    ds = _save(out, ds, rows, tagger.spec.taxonomy, args)
    write_queue(ds)
    return summary
