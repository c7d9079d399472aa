"""Hierarchical metrics: how far a prediction is from the truth in the category tree.

Paths are per-level class indices, padded with -1 below the path's depth (as
`Taxonomy.encode` gives them): an (N, L) integer array. A node is identified by its level and
index, so two paths share a node at level l exactly when they agree on every level up to l.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fashion_tagger.taxonomy import Taxonomy


def _common_prefix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Number of leading levels on which both paths name the same node."""
    same = (true == pred) & (true >= 0)
    return np.cumprod(same, axis=1).sum(axis=1)


def _lengths(paths: np.ndarray) -> np.ndarray:
    return (paths >= 0).sum(axis=1)


def hierarchical_prf(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Hierarchical precision, recall and F1 of Kiritchenko et al. (2005), micro-averaged.

    Each path is augmented with its ancestors (every node from the top level down; the implicit
    root is left out), then hP = sum |P ∩ T| / sum |P|, hR = sum |P ∩ T| / sum |T| over all
    rows, hF1 = 2 hP hR / (hP + hR). A wrong leaf under the right parent still earns the parent.
    """
    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    # a node is (level, index): count the levels naming the same node (for valid paths, the
    # common prefix; this also scores raw per-level argmax, which may not be a path)
    common = float(np.sum((true == pred) & (true >= 0)))
    n_pred = float(_lengths(pred).sum())
    n_true = float(_lengths(true).sum())
    hp = common / n_pred if n_pred else 0.0
    hr = common / n_true if n_true else 0.0
    hf = 2 * hp * hr / (hp + hr) if hp + hr else 0.0
    return {"hP": hp, "hR": hr, "hF1": hf}


def is_valid_path(taxonomy: Taxonomy, indices: Sequence[int]) -> bool:
    """Whether per-level indices walk down the tree from the top to a leaf.

    Walking stops at the first leaf (deeper entries are ignored: the model still outputs scores
    for levels below a short path) or at the first -1, which must come at a leaf.
    """
    parent = -1
    for level, i in enumerate(indices):
        i = int(i)
        if i < 0:
            return level > 0 and taxonomy.is_leaf(level - 1, parent)
        if not 0 <= i < taxonomy.sizes[level] or taxonomy.parents[level][i] != parent:
            return False
        if taxonomy.is_leaf(level, i):
            return True
        parent = i
    return parent >= 0 and taxonomy.is_leaf(len(indices) - 1, parent)


def truncate_at_leaf(taxonomy: Taxonomy, indices: Sequence[int]) -> list[int]:
    """A valid path's indices with -1 below its leaf (the form of `Taxonomy.encode`)."""
    out = [-1] * taxonomy.depth
    for level, i in enumerate(indices):
        out[level] = int(i)
        if i < 0 or taxonomy.is_leaf(level, int(i)):
            break
    return out


def valid_path_rate(taxonomy: Taxonomy, paths: np.ndarray) -> float:
    """Share of rows whose per-level indices form a valid root-to-leaf path (0.0 for no rows)."""
    paths = np.asarray(paths, dtype=np.int64)
    if not len(paths):
        return 0.0
    return float(np.mean([is_valid_path(taxonomy, p) for p in paths]))


def error_split(true: np.ndarray, pred: np.ndarray) -> dict[str, int | float]:
    """Split wrong predictions by where in the tree they go wrong.

    A prediction is correct when it is the true path. A wrong one is "right parent, wrong leaf"
    when it agrees with the truth on every level above the true leaf (the true leaf's parent is
    in the predicted path), and "wrong branch" otherwise (including a wrong top-level class).

    Returns:
        counts `correct`, `right_parent_wrong_leaf`, `wrong_branch`, the share of errors of each
        kind (`*_share`, of all wrong rows; 0.0 when there is none), and `first_wrong_level`:
        for each level, how many wrong predictions first leave the true path there.
    """
    true = np.asarray(true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    n_true = _lengths(true)
    common = _common_prefix(true, pred)
    correct = (true == pred).all(axis=1)
    wrong = ~correct
    parent_ok = wrong & (n_true >= 2) & (common >= n_true - 1)
    branch = wrong & ~parent_ok
    n_wrong = int(wrong.sum())
    first = np.bincount(common[wrong], minlength=true.shape[1])[: true.shape[1]]
    return {
        "correct": int(correct.sum()),
        "right_parent_wrong_leaf": int(parent_ok.sum()),
        "wrong_branch": int(branch.sum()),
        "right_parent_wrong_leaf_share": float(parent_ok.sum() / n_wrong) if n_wrong else 0.0,
        "wrong_branch_share": float(branch.sum() / n_wrong) if n_wrong else 0.0,
        "first_wrong_level": [int(c) for c in first],
    }
