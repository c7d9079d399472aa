"""`fashion-tagger audit`: rank every labelled row by how likely its label is wrong.

How (see `curation.scoring` for the arithmetic):
1. Embed every image once with a frozen backbone (pretrained Lite0, or a run's own backbone with
   its preprocessing), cached in the dataset dir (`curation.features`).
2. K-fold heads per level on those features (a small MLP; linear on request), folds grouped by
   item: out-of-fold probabilities, so no row is scored by a model that saw its label. Each
   level's probabilities are calibrated with one temperature fitted on the out-of-fold loss.
3. Per level, cleanlab scores the given node under P(node | given parent) of the joint over
   valid paths and estimates how often that level's labels are wrong (confident learning). A
   row's score is the posterior probability that its given path is wrong, by Bayes' rule with
   those noise rates along the tree; the suggested path is the best valid path, `level` the
   first level where the two part. Rows scoring at least the threshold are flagged. With
   `level`, a row is scored by one level alone: the posterior that its node there is wrong,
   the nodes above right (the queue for mix-ups among siblings).
4. On the same features: near-duplicate photos whose labels differ (`duplicate_conflict`), and
   photos far from all others (`outlier`, cleanlab's kNN out-of-distribution score).

The result is `label_issues.parquet` in the dataset dir. Its format (`ISSUES_SCHEMA`,
`write_issues`, `read_issues`) lives in `curation.relabel` and is re-exported
here: the review page and `label` read and write the same file.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fashion_tagger import _progress
from fashion_tagger.curation import features as audit_features
from fashion_tagger.curation.features import AuditError
from fashion_tagger.curation.relabel import (
    ISSUES_FILE,
    ISSUES_SCHEMA,
    KINDS,
    conform_issues,
    issues_settings,
    read_issues,
    write_issues,
)
from fashion_tagger.curation.scoring import (
    DECODER,
    HeadConfig,
    PathScores,
    fit_oof,
    item_folds,
    reduce_features,
    score_paths,
)
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.taxonomy import Taxonomy

# -- the audit --------------------------------------------------------------------------------
DEFAULT_THRESHOLD = 0.99
"""Flag rows whose label is wrong with posterior probability >= 0.99: wrong beyond reasonable
doubt, so the default review queue is short and mostly true errors. The score is a
calibrated probability, so the threshold reads as one: 0.5 flags every label the audit finds
more likely wrong than right (on the product zip, two to four times the rows, sibling mix-ups
among them). Measured on the product zip with 5 % injected flips: see BENCHMARKS.md."""


@dataclass(frozen=True)
class AuditConfig:
    """How the audit runs.

    Attributes:
        folds: K of the K-fold out-of-fold probabilities (`--folds`); at least 2.
        threshold: flag rows whose score (the posterior probability that the label is wrong)
            is at least this (`--threshold`). None: cleanlab's confident learning per level
            (`find_label_issues`) decides; on the product zip it flags about 20 % of the rows
            (every confusable pair), too many to review, so the default is a score threshold.
        seed: folds and heads.
        head: the fast heads' recipe.
        neighbours: k of the kNN graph behind outliers and duplicate conflicts.
        knn_dims: principal components the kNN graph works in (distances, not classes).
        duplicate_distance: cosine distance under which two photos count as the same picture.
        outlier_z: robust z-score (median / MAD) of the kNN distance above which a photo is an
            outlier; 3.5 is Iglewicz and Hoaglin's rule.
        size: (H, W) input of the default pretrained backbone.
        level: rank and flag by this taxonomy level alone (`--level`): the score becomes the
            posterior probability that the row's node at that level is wrong given that the
            nodes above it are right. The review queue for mix-ups among siblings (Tshirts for
            Tops), which the whole path's score ranks below doubts that cross branches. None:
            the whole path.
    """

    folds: int = 5
    threshold: float | None = DEFAULT_THRESHOLD
    seed: int = 0
    head: HeadConfig = field(default_factory=HeadConfig)
    neighbours: int = 10
    knn_dims: int = 256
    duplicate_distance: float = 0.02
    outlier_z: float = 3.5
    size: tuple[int, int] = audit_features.DEFAULT_SIZE
    level: str | None = None

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise AuditError(f"--folds must be at least 2 (got {self.folds}); try --folds 5")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise AuditError(f"--threshold must be in [0, 1] (got {self.threshold}); try 0.5")
        if self.head.hidden < 0:
            raise AuditError(f"--hidden must be 0 (linear) or more (got {self.head.hidden})")
        if self.level is not None and self.threshold is None:
            raise AuditError("--level flags by its posterior and --threshold; "
                             "--confident-learning flags the whole path: choose one")  # fmt: skip


@dataclass(frozen=True)
class AuditResult:
    """What the audit found; `top` lists the highest-scored issues."""

    path: str
    rows: int
    issues: int
    by_kind: dict[str, int]
    by_level: dict[str, int]
    decoder: str
    backbone: str
    embedded_now: int
    seconds: dict[str, float]
    top: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _neighbour_findings(
    x: np.ndarray, paths: list[tuple[str, ...]], cfg: AuditConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(outlier_score in [0, 1], is_outlier, index of a near-identical other-label photo or -1).

    One kNN graph (cleanlab's OutOfDistribution on the features) serves both findings.
    """
    n = len(x)
    dup = np.full(n, -1, dtype=np.int64)
    if n <= 2:
        return np.zeros(n), np.zeros(n, dtype=bool), dup
    from cleanlab.outlier import OutOfDistribution

    k = min(cfg.neighbours, n - 1)
    ood = OutOfDistribution(params={"k": k})
    typical = ood.fit_score(features=x, verbose=False)
    outlier_score = np.clip(1.0 - typical, 0.0, 1.0)
    dist = -np.log(np.clip(typical, 1e-300, 1.0))  # avg kNN distance / its median
    mad = np.median(np.abs(dist - np.median(dist))) * 1.4826
    is_outlier = (dist - np.median(dist)) / max(mad, 1e-12) > cfg.outlier_z
    distances, indices = ood.params["knn"].kneighbors()
    for i in range(n):
        for d, j in zip(distances[i], indices[i], strict=True):
            if d > cfg.duplicate_distance:
                break
            if paths[j] != paths[i]:
                dup[i] = j
                break
    return outlier_score, is_outlier, dup


def _features(
    ds: Dataset,
    run_dir: str | Path | None,
    cfg: AuditConfig,
    progress: bool,
    backbone: tuple[Any, audit_features.FeatureSpec] | None,
) -> tuple[np.ndarray, str, int]:
    if backbone is not None:
        net, spec = backbone
    elif run_dir is not None:
        net, spec = audit_features.run_backbone(run_dir)
    else:
        net, spec = audit_features.pretrained_backbone(cfg.size)
    feats, now = audit_features.embed(ds, net, spec, progress=progress)
    name = f"{spec.backbone} ({spec.source}, {spec.input_size[0]}x{spec.input_size[1]})"
    return feats, name, now


def audit(
    dataset_dir: str | Path,
    run_dir: str | Path | None = None,
    config: AuditConfig | None = None,
    progress: bool = True,
    features: np.ndarray | None = None,
    backbone: tuple[Any, audit_features.FeatureSpec] | None = None,
) -> AuditResult:
    """Score every labelled row of a dataset dir and write `label_issues.parquet` there.

    Args:
        run_dir: reuse this run's backbone and preprocessing instead of pretrained Lite0.
        features: (N, F) features for every row of the manifest, in order (skips embedding;
            for tests and for callers that embed otherwise).
        backbone: (module, FeatureSpec) to embed with instead (a test's cheap network).
    """
    cfg = config or AuditConfig()
    ds = Dataset.open(dataset_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    labelled = np.flatnonzero([len(p) > 0 for p in ds.labels])
    if len(labelled) == 0:
        raise AuditError(f"{dataset_dir} has no labelled rows to audit")
    sub = ds.with_table(ds.table.take(pa.array(labelled)))
    _level_index(sub.taxonomy, cfg.level)  # a wrong --level fails before minutes of embedding
    if features is None:
        feats, name, embedded = _features(sub, run_dir, cfg, progress, backbone)
    else:
        if len(features) != len(ds):
            raise AuditError(f"features have {len(features)} rows; the manifest has {len(ds)}")
        feats, name, embedded = np.asarray(features)[labelled], "given features", 0
    timings["features"] = time.perf_counter() - t0
    table, scored = audit_rows(sub, feats, cfg, progress)
    timings["scoring"] = time.perf_counter() - t0 - timings["features"]
    settings = {
        "backbone": name,
        "folds": cfg.folds,
        "threshold": cfg.threshold,
        "seed": cfg.seed,
        "head": asdict(cfg.head),
        "decoder": DECODER,
        "score": "posterior probability that the given path is wrong (curation.scoring)"
        if cfg.level is None
        else f"posterior probability that the given {cfg.level} is wrong, the levels above "
        "right (curation.scoring)",
        "level": cfg.level,
        "noise_rates": [round(float(r), 5) for r in scored.noise_rates],
        "temperatures": [round(float(t), 4) for t in scored.temperatures],
    }
    path = write_issues(ds.root, table, settings)
    issues = table.filter(table.column("is_issue"))
    kinds = issues.column("kind").to_pylist()
    levels = [lv or "none" for lv in issues.column("level").to_pylist()]
    top = issues.slice(0, 20).select(["item_id", "image", "given", "suggested", "score", "kind"])
    return AuditResult(
        path=str(path),
        rows=table.num_rows,
        issues=issues.num_rows,
        by_kind={k: kinds.count(k) for k in KINDS if k in kinds},
        by_level={lv: levels.count(lv) for lv in sorted(set(levels))},
        decoder=DECODER,
        backbone=name,
        embedded_now=embedded,
        seconds={k: round(v, 2) for k, v in timings.items()},
        top=top.to_pylist(),
    )


__all__ = [
    "ISSUES_FILE",
    "ISSUES_SCHEMA",
    "KINDS",
    "AuditConfig",
    "AuditResult",
    "audit",
    "audit_rows",
    "conform_issues",
    "issues_settings",
    "read_issues",
    "write_issues",
]


def _level_index(tax: Taxonomy, name: str | None) -> int | None:
    """The index of `--level` in the taxonomy, or a one-line error naming the levels."""
    if name is None:
        return None
    if name not in tax.level_names:
        raise AuditError(
            f"--level {name!r} is not a level of this dataset; its levels: "
            + ", ".join(tax.level_names)
        )
    return tax.level_names.index(name)


def audit_rows(
    ds: Dataset, features: np.ndarray, cfg: AuditConfig, progress: bool = False
) -> tuple[pa.Table, PathScores]:
    """The issues table for a dataset whose every row is labelled, from its features.

    Returns the table (sorted: issues first, then by score) and the `PathScores`.
    """
    tax = ds.taxonomy
    paths = [tuple(p) for p in ds.labels]
    items = ds.table.column("item_id").to_pylist()
    if len(set(items)) < cfg.folds:
        raise AuditError(
            f"{len(set(items))} items cannot make {cfg.folds} folds; lower --folds or add data"
        )
    level = _level_index(tax, cfg.level)
    given = np.array([tax.encode(p) for p in paths], dtype=np.int64).reshape(len(paths), -1)
    x = reduce_features(features, cfg.head.dims)[0]
    near = reduce_features(features, cfg.knn_dims)[1]
    folds = item_folds(items, ["\x1f".join(p) for p in paths], cfg.folds, cfg.seed)
    with _progress.bar("out-of-fold heads", total=cfg.folds, enabled=progress) as bar:
        probs = fit_oof(
            x, list(given.T), list(tax.sizes), folds, cfg.head, cfg.seed, on_fold=bar.advance
        )
    scored = score_paths(tax, given, probs, cfg.threshold)
    score, flagged = scored.score, scored.is_issue
    if level is not None:
        score = np.nan_to_num(scored.level_posteriors[:, level])
        flagged = score >= cfg.threshold
    outlier_score, is_outlier, dup = _neighbour_findings(near, paths, cfg)
    kind = np.where(
        flagged,
        "label",
        np.where(dup >= 0, "duplicate_conflict", np.where(is_outlier, "outlier", "ok")),
    )
    images = ds.table.column("image").to_pylist()
    suggested = [list(tax.decode(s)) for s in scored.suggested]
    level_names = list(tax.level_names)
    level_scores = [
        [float(v) for v in row[: len(p)]] for row, p in zip(scored.level_scores, paths, strict=True)
    ]
    table = pa.table(
        {
            "item_id": items,
            "image": images,
            "given": [list(p) for p in paths],
            "suggested": suggested,
            "score": score.astype(float),
            "kind": kind.tolist(),
            "level": [  # where given and suggested part; for a --level flag, at least that level
                level_names[lv] if lv >= 0 else (cfg.level if f else None)
                for lv, f in zip(scored.level, flagged, strict=True)
            ],
            "is_issue": (kind != "ok").tolist(),
            "level_scores": level_scores,
            "outlier_score": outlier_score.astype(float),
            "duplicate_of": [images[j] if j >= 0 else None for j in dup],
            "duplicate_item": [items[j] if j >= 0 else None for j in dup],
            "split": ds.table.column("split").to_pylist(),
            "sha256": ds.table.column("sha256").to_pylist(),
        }
    )
    order = np.lexsort((-score, kind == "ok"))
    return conform_issues(table.take(pa.array(order))), scored
