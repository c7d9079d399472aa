"""Metrics by slice: is the model as good on pink shoes as on black ones?

A slice is the rows sharing one value of a name (`colour=Pink`): a level, an attribute group or
a meta key, as `dataset.fields` resolves it. For each value and each level this gives the rows,
accuracy (with its Wilson 95 % interval) and macro F1, and then the gaps: each value's accuracy
against the rest of the split's, with Newcombe's 95 % interval on the difference. A gap whose
interval excludes 0, on a slice of at least `MIN_N` rows (and a rest as large), is `meaningful`:
the sample sizes support it. (Below that the score intervals are too optimistic: one wrong
photo against a 90 % rest "excludes 0", yet a 90 % model gets one photo wrong one time in ten.)
Gaps are listed meaningful ones first, then most convincing first (the interval's bound nearest
0, farthest from it), so a 0 % on a slice of one photo does not outrank a 10-point gap on two
hundred.

Pure functions on arrays, like `metrics`; `evaluate` feeds them and writes the result under
`slices` in metrics.json.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fashion_tagger.evaluation import metrics

GAPS = 5
"""Gaps listed per name (the most convincing ones; every value's numbers are in `values`)."""
MIN_N = 10
"""Rows a slice (and the rest) needs before its gap can be called meaningful."""


@dataclass(frozen=True)
class SliceSpec:
    """One name to slice by: its kind (`level`, `attribute`, `former level`, `meta`) and, per
    evaluated row, its values (a row may have none, or several for an attribute group)."""

    name: str
    kind: str
    values: Sequence[tuple[str, ...]]


def _level(rows: np.ndarray, truth: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """n, accuracy (+ Wilson interval) and macro F1 of one level over `rows` (a mask)."""
    y_true, y_pred = truth[rows], pred[rows]
    n = int(y_true.size)
    right = int(np.sum(y_true == y_pred))
    low, high = metrics.wilson_interval(right, n)
    return {
        "n": n,
        "correct": right,
        "accuracy": right / n if n else 0.0,
        "accuracy_ci95": [low, high],
        "macro_f1": metrics.macro_f1(y_true, y_pred, n_classes) if n else 0.0,
    }


def _gaps(
    level_names: Sequence[str],
    values: dict[str, dict[str, Any]],
    totals: dict[str, tuple[int, int]],
) -> list[dict[str, Any]]:
    """Each (value, level): its accuracy minus the rest's, with the interval; most convincing
    first."""
    out = []
    for value, block in values.items():
        for name in level_names:
            b = block["levels"][name]
            rest_k, rest_n = totals[name][0] - b["correct"], totals[name][1] - b["n"]
            if not b["n"] or not rest_n:
                continue
            d, low, high = metrics.proportion_difference(b["correct"], b["n"], rest_k, rest_n)
            out.append(
                {
                    "value": value,
                    "level": name,
                    "n": b["n"],
                    "accuracy": b["accuracy"],
                    "rest_n": rest_n,
                    "rest_accuracy": rest_k / rest_n,
                    "gap": d,
                    "gap_ci95": [low, high],
                    "meaningful": bool((low > 0 or high < 0) and min(b["n"], rest_n) >= MIN_N),
                }
            )
    out.sort(
        key=lambda g: (
            not g["meaningful"],
            -max(g["gap_ci95"][0], -g["gap_ci95"][1]),
            g["value"],
            g["level"],
        )
    )
    return out[:GAPS]


def slice_block(
    spec: SliceSpec,
    truth: np.ndarray,
    pred: np.ndarray,
    level_names: Sequence[str],
    sizes: Sequence[int],
) -> dict[str, Any]:
    """The `slices[name]` block of metrics.json.

    Args:
        spec: the name and its values on the same N rows as `truth`.
        truth: (N, L) true class per level, -1 below a path's depth (`scoring.Truth.paths`).
        pred: (N, L) decoded predicted class per level, -1 where the path stops.
        level_names: the L level names.
        sizes: classes per level (for macro F1).

    Returns:
        `kind`; `n_without_value` (rows that have no value of the name, in no slice);
        `values`: value -> {`n`, `levels`: level -> {`n`, `correct`, `accuracy`,
        `accuracy_ci95`, `macro_f1`}}, largest slices first; `gaps` (see the module docstring).
    """
    truth = np.asarray(truth, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if len(spec.values) != truth.shape[0]:
        raise ValueError(f"{len(spec.values)} slice values for {truth.shape[0]} rows")
    counts = Counter(v for vs in spec.values for v in vs)
    reach = [truth[:, lvl] >= 0 for lvl in range(len(level_names))]
    values: dict[str, dict[str, Any]] = {}
    for value, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        member = np.array([value in vs for vs in spec.values], dtype=bool)
        values[value] = {
            "n": n,
            "levels": {
                name: _level(member & reach[lvl], truth[:, lvl], pred[:, lvl], sizes[lvl])
                for lvl, name in enumerate(level_names)
            },
        }
    totals = {
        name: (int(np.sum((truth[:, lvl] == pred[:, lvl]) & reach[lvl])), int(reach[lvl].sum()))
        for lvl, name in enumerate(level_names)
    }
    return {
        "kind": spec.kind,
        "n_without_value": sum(1 for vs in spec.values if not vs),
        "values": values,
        "gaps": _gaps(level_names, values, totals),
    }


def slice_metrics(
    specs: Sequence[SliceSpec],
    truth: np.ndarray,
    pred: np.ndarray,
    level_names: Sequence[str],
    sizes: Sequence[int],
) -> dict[str, Any]:
    """`slices` of metrics.json: one `slice_block` per name, in the order asked."""
    return {s.name: slice_block(s, truth, pred, level_names, sizes) for s in specs}
