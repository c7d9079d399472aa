"""Every number of an evaluation, from a model's probabilities and a split's labels.

This is the pure half of `evaluate`: no model, no files. `score(...)` takes per-level class
probabilities and attribute probabilities (what `Tagger.predict_arrays` returns) with the true
label paths and attributes, and returns the dict that `metrics.json` holds (its schema is in
docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fashion_tagger.evaluation import hierarchy, metrics
from fashion_tagger.model.decode import LeafTable, log_probs
from fashion_tagger.taxonomy import Taxonomy

FORMAT_VERSION = 1
TOP_LOSSES = 16
CONFUSED_PAIRS = 10


@dataclass(frozen=True)
class Truth:
    """The labels of the evaluated rows, encoded against the model's taxonomy and attributes.

    Attributes:
        paths: (N, L) class index per level, -1 below each path's depth.
        attributes: (N, A) bool, one column per model attribute.
        images: (N,) image path of each row (relative to the dataset dir), for the report.
    """

    paths: np.ndarray
    attributes: np.ndarray
    images: list[str]


def encode_truth(
    taxonomy: Taxonomy,
    attribute_names: Sequence[str],
    labels: Sequence[Sequence[str]],
    attributes: Sequence[Sequence[str]],
    images: Sequence[str],
) -> tuple[Truth, np.ndarray]:
    """Encode dataset labels for a model; rows whose path the model does not know are dropped.

    Returns:
        (truth of the kept rows, boolean mask of kept rows over the input).
    """
    keep = np.array([bool(p) and taxonomy.contains(p) for p in labels], dtype=bool)
    paths = np.array(
        [taxonomy.encode(p) for p, k in zip(labels, keep, strict=True) if k], dtype=np.int64
    ).reshape(-1, taxonomy.depth)
    column = {n: j for j, n in enumerate(attribute_names)}
    attrs = np.zeros((int(keep.sum()), len(attribute_names)), dtype=bool)
    row = 0
    for a, k in zip(attributes, keep, strict=True):
        if k:
            for name in a or ():
                if name in column:
                    attrs[row, column[name]] = True
            row += 1
    kept_images = [str(im) for im, k in zip(images, keep, strict=True) if k]
    return Truth(paths, attrs, kept_images), keep


def _path_names(taxonomy: Taxonomy, path: np.ndarray) -> list[str]:
    return list(taxonomy.decode([int(i) for i in path]))


def _level_block(
    taxonomy: Taxonomy, level: int, probs: np.ndarray, truth: np.ndarray, pred: np.ndarray
) -> dict[str, Any]:
    """One level's numbers over the rows whose true path reaches that level."""
    rows = truth[:, level] >= 0
    y_true, y_pred, p = truth[rows, level], pred[rows, level], probs[rows]
    n_classes = taxonomy.sizes[level]
    summary = metrics.single_label_summary(y_true, p, y_pred)
    raw = metrics.accuracy(y_true, p.argmax(axis=1)) if len(y_true) else 0.0
    pc = metrics.per_class(y_true, y_pred, n_classes)
    labels = [" > ".join(taxonomy.path(level, i)) for i in range(n_classes)]
    cm = metrics.confusion_matrix(y_true[y_pred >= 0], y_pred[y_pred >= 0], n_classes)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:CONFUSED_PAIRS]
    pairs = [
        {"true": labels[t], "predicted": labels[q], "count": int(off[t, q])}
        for t, q in zip(*np.unravel_index(order, off.shape), strict=True)
        if off[t, q] > 0
    ]
    return {
        "name": taxonomy.level_names[level],
        **summary,
        "raw_argmax_accuracy": raw,
        "no_prediction": int(np.sum(y_pred < 0)),
        "per_class": [
            {
                "name": labels[i],
                "precision": float(pc.precision[i]),
                "recall": float(pc.recall[i]),
                "f1": float(pc.f1[i]),
                "support": int(pc.support[i]),
                "predicted": int(pc.predicted[i]),
            }
            for i in range(n_classes)
        ],
        "confusion": {"labels": labels, "matrix": cm.tolist()},
        "confused_pairs": pairs,
    }


def _attribute_block(
    names: Sequence[str], probs: np.ndarray, truth: np.ndarray, thresholds: np.ndarray
) -> dict[str, Any]:
    aps = metrics.average_precisions(truth, probs)
    pl = metrics.per_label(truth, probs, thresholds)
    return {
        "names": list(names),
        "n_images": int(truth.shape[0]),
        "at_0.75": metrics.multilabel_overall(truth, probs, metrics.PAPER_THRESHOLD),
        "at_thresholds": metrics.multilabel_overall(truth, probs, thresholds),
        "at_k": metrics.multilabel_at_k(truth, probs),
        "mAP": metrics.mean_average_precision(aps),
        "n_attributes_with_positives": int(np.sum(~np.isnan(aps))),
        "per_attribute": [
            {
                "name": n,
                "threshold": float(thresholds[j]),
                "ap": None if np.isnan(aps[j]) else float(aps[j]),
                "precision": float(pl.precision[j]),
                "recall": float(pl.recall[j]),
                "f1": float(pl.f1[j]),
                "support": int(pl.support[j]),
                "predicted": int(pl.predicted[j]),
            }
            for j, n in enumerate(names)
        ],
    }


def _top_losses(
    taxonomy: Taxonomy, levels: Sequence[np.ndarray], truth: Truth, pred: np.ndarray
) -> list[dict[str, Any]]:
    """The rows the model is most wrong about: highest cross-entropy of the true path."""
    n = truth.paths.shape[0]
    loss = np.zeros(n, dtype=np.float64)
    for level, p in enumerate(levels):
        rows = truth.paths[:, level] >= 0
        loss[rows] -= log_probs(p[rows, truth.paths[rows, level]])
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i in np.argsort(-loss, kind="stable"):
        if len(out) == TOP_LOSSES:
            break
        if truth.images[i] in seen:  # the same photo listed twice: show it once
            continue
        seen.add(truth.images[i])
        pred_path = [
            {
                "level": taxonomy.level_names[lvl],
                "label": taxonomy.names[lvl][int(c)],
                "score": float(levels[lvl][i, int(c)]),
            }
            for lvl, c in enumerate(pred[i])
            if c >= 0
        ]
        out.append(
            {
                "image": truth.images[i],
                "loss": float(loss[i]),
                "true": _path_names(taxonomy, truth.paths[i]),
                "predicted": pred_path,
                "correct": bool((pred[i] == truth.paths[i]).all()),
            }
        )
    return out


def score(
    taxonomy: Taxonomy,
    levels: Sequence[np.ndarray],
    attributes: np.ndarray,
    truth: Truth,
    attribute_names: Sequence[str],
    thresholds: Sequence[float],
) -> dict[str, Any]:
    """All metrics of one evaluation.

    Args:
        taxonomy: the model's tree.
        levels: per level, (N, C_l) class probabilities.
        attributes: (N, A) attribute probabilities (A may be 0).
        truth: the encoded labels of the same N rows.
        attribute_names: the A `group=value` names.
        thresholds: the A per-attribute thresholds of model.json.

    Returns:
        `levels`, `attributes`, `hierarchy` and `top_losses` blocks of metrics.json.
    """
    levels = [np.asarray(p, dtype=np.float64) for p in levels]
    attributes = np.asarray(attributes, dtype=np.float64).reshape(truth.paths.shape[0], -1)
    pred = LeafTable.from_taxonomy(taxonomy).best_paths(levels)
    raw = np.stack([p.argmax(axis=1) for p in levels], axis=1)
    raw_truncated = np.array(
        [hierarchy.truncate_at_leaf(taxonomy, r) for r in raw], dtype=np.int64
    ).reshape(pred.shape)
    hier = {
        "consistent": hierarchy.hierarchical_prf(truth.paths, pred),
        "raw_argmax": hierarchy.hierarchical_prf(truth.paths, raw_truncated),
        "valid_path_rate": {
            "consistent": hierarchy.valid_path_rate(taxonomy, pred),
            "raw_argmax": hierarchy.valid_path_rate(taxonomy, raw),
        },
        "exact_path_accuracy": float(np.mean((pred == truth.paths).all(axis=1)))
        if len(pred)
        else 0.0,
        "errors": hierarchy.error_split(truth.paths, pred),
    }
    return {
        "levels": [
            _level_block(taxonomy, lvl, levels[lvl], truth.paths, pred)
            for lvl in range(taxonomy.depth)
        ],
        "attributes": _attribute_block(
            attribute_names, attributes, truth.attributes, np.asarray(thresholds, dtype=float)
        ),
        "hierarchy": hier,
        "top_losses": _top_losses(taxonomy, levels, truth, pred),
    }
