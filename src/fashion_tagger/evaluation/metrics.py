"""Classification metrics as pure functions on numpy arrays.

Single-label metrics (one taxonomy level) take integer class ids; multi-label metrics (attributes)
take a 0/1 matrix of true labels and a matrix of scores. Each function matches scikit-learn where
scikit-learn has the same metric (the tests check it), but needs nothing beyond numpy, so the
numbers are easy to audit and the conventions for empty cases are ours and documented:
a ratio whose denominator is 0 is 0.0 (scikit-learn's `zero_division=0`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

#: The attribute threshold of Ferreira et al. (2018): a label is predicted when p >= 0.75.
PAPER_THRESHOLD = 0.75


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den, 0 where den is 0 (no prediction or no support: nothing to be right about)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    return _ratio(2 * p * r, p + r)


# -- single label (one level of the tree) --------------------------------------------------------
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """`cm[t, p]` counts rows of true class t predicted as p (scikit-learn's orientation)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of rows whose predicted class is the true one (0.0 for no rows)."""
    y_true = np.asarray(y_true)
    return float(np.mean(y_true == np.asarray(y_pred))) if y_true.size else 0.0


def top_k_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int = 5) -> float:
    """Share of rows whose true class is among the k highest scores (all of them if k >= C).

    Ties are broken by class order, as `np.argsort` does; scikit-learn's `top_k_accuracy_score`
    agrees whenever scores are distinct, which is the case for real probabilities.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if not y_true.size:
        return 0.0
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean((top == y_true[:, None]).any(axis=1)))


@dataclass(frozen=True)
class PerClass:
    """Per-class precision, recall, F1 and support (number of true rows), one entry per class."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    predicted: np.ndarray


def per_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> PerClass:
    """Precision, recall, F1 of each class; a class never predicted has precision 0.

    A prediction of -1 means "no class at this level" (a decoded path that stops above it): it
    is a miss for the true class and a prediction of no class.
    """
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = confusion_matrix(y_true, np.where(y_pred < 0, n_classes, y_pred), n_classes + 1)
    cm = cm[:n_classes]
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)[:n_classes]
    p = _ratio(tp, predicted)
    r = _ratio(tp, support)
    return PerClass(p, r, _f1(p, r), support, predicted)


def single_label_summary(
    y_true: np.ndarray, scores: np.ndarray, y_pred: np.ndarray | None = None, k: int = 5
) -> dict[str, float]:
    """The headline numbers of one level.

    Args:
        y_true: (N,) true class ids.
        scores: (N, C) class probabilities (for top-k).
        y_pred: (N,) predicted class ids; the argmax of `scores` when None. Evaluation passes the
            consistent decoded path here, so the numbers describe what users get.
        k: for top-k accuracy.

    Returns:
        `accuracy`, `top5_accuracy` (top-k), `OP`, `OR`, `OF1` (precision, recall and F1 averaged
        over classes weighted by support: scikit-learn's `average="weighted"`), `macro_f1`
        (unweighted mean over classes with support or predictions, as scikit-learn's labels=None),
        and `n`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = scores.argmax(axis=1) if y_pred is None else np.asarray(y_pred, dtype=np.int64)
    pc = per_class(y_true, y_pred, scores.shape[1])
    total = pc.support.sum()
    weights = pc.support / total if total else np.zeros_like(pc.precision)
    return {
        "n": int(y_true.size),
        "accuracy": accuracy(y_true, y_pred),
        "top5_accuracy": top_k_accuracy(y_true, scores, k),
        "OP": float(np.sum(weights * pc.precision)),
        "OR": float(np.sum(weights * pc.recall)),
        "OF1": float(np.sum(weights * pc.f1)),
        "macro_f1": macro_f1(y_true, y_pred, scores.shape[1]),
    }


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes that occur (in truth or prediction), as `single_label_summary`
    reports it; a prediction of -1 (no class at this level) is a miss, never a class."""
    pc = per_class(y_true, y_pred, n_classes)
    present = (pc.support > 0) | (pc.predicted > 0)
    return float(pc.f1[present].mean()) if present.any() else 0.0


#: z of a two-sided 95 % interval.
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (Wilson 1927; Newcombe 1998, method 3).

    Unlike the normal approximation it stays within [0, 1] and is honest at k = 0, k = n and
    small n, which is where a slice of a test split usually is. (0, 1) for n = 0: nothing known.
    """
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    den = 1 + z * z / n
    return max(0.0, (centre - half) / den), min(1.0, (centre + half) / den)


def proportion_difference(
    k1: int, n1: int, k2: int, n2: int, z: float = Z95
) -> tuple[float, float, float]:
    """p1 - p2 of two independent proportions and its 95 % interval, by Newcombe's hybrid score
    method (1998, method 10: the Wilson intervals of both, combined). A slice against the rest
    of a split is such a pair; an interval that excludes 0 is a gap the sample sizes support.

    Returns:
        (difference, low, high); (0, -1, 1) when either side has no rows.
    """
    if n1 <= 0 or n2 <= 0:
        return 0.0, -1.0, 1.0
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def paired_comparison(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float | int]:
    """Two classifiers scored on the same examples: is A's accuracy really above B's?

    Comparing two accuracies as if they came from independent samples overstates the noise: most
    examples are right (or wrong) for both models, and only the disagreements carry information.
    This looks at those alone.

    Args:
        correct_a, correct_b: (N,) booleans, whether each model got example i right.

    Returns:
        `n`; `a_only` and `b_only`, the examples only A (only B) got right; `diff`, A's accuracy
        minus B's; `ci95_low`/`ci95_high`, a 95 % interval on `diff` from the paired normal
        approximation; `p_value`, the exact two-sided McNemar test of "A and B are equally
        accurate" (a binomial test on the disagreements).
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two (N,) vectors, got shapes {a.shape} and {b.shape}")
    n = int(a.size)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    diff = (a_only - b_only) / n if n else 0.0
    # variance of the mean of d_i in {-1, 0, 1}: (E[d^2] - E[d]^2) / n
    se = math.sqrt(max((a_only + b_only) / n - diff**2, 0.0) / n) if n else 0.0
    m = a_only + b_only
    tail = sum(math.comb(m, k) for k in range(min(a_only, b_only) + 1))
    p = min(1.0, float(Fraction(2 * tail, 2**m))) if m else 1.0
    return {
        "n": n,
        "a_only": a_only,
        "b_only": b_only,
        "diff": diff,
        "ci95_low": diff - 1.96 * se,
        "ci95_high": diff + 1.96 * se,
        "p_value": p,
    }


# -- multi label (attributes) --------------------------------------------------------------------
def multilabel_overall(
    y_true: np.ndarray, scores: np.ndarray, thresholds: float | np.ndarray = PAPER_THRESHOLD
) -> dict[str, float]:
    """Overall (micro) precision, recall, F1 of thresholded attributes, as in Ferreira et al.

    OP = correct predicted labels / predicted labels, OR = correct / true labels, summed over all
    images and attributes; OF1 = their harmonic mean. A label is predicted when its score is at or
    above its threshold (one float for all, or one per attribute).
    """
    y_true = np.asarray(y_true, dtype=bool)
    pred = np.asarray(scores, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)
    tp = np.sum(pred & y_true)
    p = float(_ratio(tp, pred.sum()))
    r = float(_ratio(tp, y_true.sum()))
    return {"OP": p, "OR": r, "OF1": float(_f1(np.float64(p), np.float64(r)))}


def multilabel_at_k(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """P@k, R@k, F1@k with k = the number of true labels of each image.

    Each image predicts its k highest-scoring attributes; precision and recall are micro-averaged
    over images (sum of hits / sum of k). With k = |true labels|, P@k = R@k = F1@k. Images with no
    true attribute have k = 0: they predict nothing and contribute nothing, so they are left out
    (their count is `n_images_without_labels`).
    """
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    ks = y_true.sum(axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(order.shape[0])[:, None]
    ranks[rows, order] = np.arange(order.shape[1])[None, :]
    pred = ranks < ks[:, None]
    hits = np.sum(pred & y_true)
    p = float(_ratio(hits, pred.sum()))
    r = float(_ratio(hits, ks.sum()))
    return {
        "P@k": p,
        "R@k": r,
        "F1@k": float(_f1(np.float64(p), np.float64(r))),
        "n_images_without_labels": int(np.sum(ks == 0)),
    }


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve of one binary label, scikit-learn's step rule.

    AP = sum over thresholds of (R_n - R_{n-1}) * P_n, thresholds at each distinct score.
    Returns NaN when there is no positive (AP is undefined; such labels are left out of mAP).
    """
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(y_true.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y_true[order]
    tp = np.cumsum(t)
    fp = np.cumsum(~t)
    # keep the last position of each distinct score: ties are one threshold
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precisions(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each attribute (column); NaN for an attribute with no positive."""
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    return np.array(
        [average_precision(y_true[:, j], scores[:, j]) for j in range(y_true.shape[1])],
        dtype=np.float64,
    )


def mean_average_precision(aps: np.ndarray) -> float:
    """Mean of the defined APs (attributes with at least one positive); 0.0 when there is none."""
    aps = np.asarray(aps, dtype=np.float64)
    defined = aps[~np.isnan(aps)]
    return float(defined.mean()) if defined.size else 0.0


def per_label(y_true: np.ndarray, scores: np.ndarray, thresholds: float | np.ndarray) -> PerClass:
    """Per-attribute precision, recall, F1, support at the given thresholds."""
    y_true = np.asarray(y_true, dtype=bool)
    pred = np.asarray(scores, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)
    tp = np.sum(pred & y_true, axis=0)
    support = y_true.sum(axis=0)
    predicted = pred.sum(axis=0)
    p = _ratio(tp, predicted)
    r = _ratio(tp, support)
    return PerClass(p, r, _f1(p, r), support, predicted)


# -- threshold calibration -----------------------------------------------------------------------
def best_threshold(
    y_true: np.ndarray, scores: np.ndarray, target_precision: float | None = None
) -> tuple[float, float, float, float, str]:
    """The threshold of one attribute that maximises F1, or reaches a target precision.

    Candidates are the distinct scores (predict p >= t). With `target_precision`, the lowest
    threshold whose precision reaches it (the most recall at that precision); when no threshold
    reaches it, the max-F1 one with a note. Ties in F1 go to the higher threshold (fewer false
    alarms for the same F1).

    A max-F1 threshold that does no better than labelling every image with the attribute (a
    rare attribute the model cannot rank: F1 = 2p/(1+p) at prevalence p) would only flood the
    predictions with false alarms, so the default is kept instead, with a note.

    Returns:
        (threshold, precision, recall, f1, note); note is "" or says why the threshold was chosen.
    """
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(y_true.sum())

    def keep_default(note: str) -> tuple[float, float, float, float, str]:
        pred = scores >= PAPER_THRESHOLD
        tp = float(np.sum(pred & y_true))
        p, r = float(_ratio(tp, pred.sum())), float(_ratio(tp, n_pos))
        return PAPER_THRESHOLD, p, r, float(_f1(np.float64(p), np.float64(r))), note

    if n_pos == 0:
        return keep_default("no positive example: kept the default")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y_true[order]
    tp = np.cumsum(t).astype(np.float64)
    predicted = np.arange(1, s.size + 1, dtype=np.float64)
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    thr, tp, predicted = s[last], tp[last], predicted[last]
    precision = tp / predicted
    recall = tp / n_pos
    f1 = _f1(precision, recall)
    if target_precision is not None:
        ok = np.nonzero(precision >= target_precision)[0]
        if ok.size:
            i = int(ok[-1])  # thresholds descend: the last one reaching the target is the lowest
            return float(thr[i]), float(precision[i]), float(recall[i]), float(f1[i]), ""
    i = int(np.flatnonzero(f1 == f1.max())[0])  # first = highest threshold among ties
    prevalence = n_pos / s.size
    if f1[i] <= 2 * prevalence / (1 + prevalence) + 1e-9:
        return keep_default("no threshold beats labelling every image: kept the default")
    note = (
        f"precision {target_precision:g} unreachable: max F1"
        if target_precision is not None
        else ""
    )
    return float(thr[i]), float(precision[i]), float(recall[i]), float(f1[i]), note
