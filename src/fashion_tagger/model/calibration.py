"""Temperature scaling: confidences that mean probabilities, fitted once, applied once.

A model trained with label smoothing (or one that overfits) reports confidences that are not
probabilities: smoothing 0.1 caps each level near 0.9, so a path confidence of 0.85 may be right
97 % of the time. Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
Networks") fixes that with one number per taxonomy level: level l's probabilities become
softmax(log p / T_l), which equals softmax(logits / T_l) since the softmax's normaliser cancels.
T is fitted by minimising the negative log-likelihood of the true class on held-out rows (the
val split); it never changes a level's argmax, only how sure the model says it is.

Where it is applied: `Tagger.predict_arrays` (inference), the one door that predict, serve,
evaluate, label, Ray batch tagging and the ONNX backend all go through, with the temperatures of
`ModelSpec.temperatures` (model.json's `temperature`). Fitted by `train` at its end (val split)
and refitted by `calibrate`. This module is the pure numpy half, below training, inference and
evaluation, so all three share one definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fashion_tagger.model.decode import LeafTable, log_probs
from fashion_tagger.taxonomy import Taxonomy

ECE_BINS = 15
"""Equal-width confidence bins of the expected calibration error (Guo et al. use 15)."""
MIN_FIT_ROWS = 50
"""Fewer held-out rows than this (at a level) keep T = 1: a temperature fitted on a handful of
rows is noise, and a wrong one moves every confidence."""
T_RANGE = (0.05, 20.0)
"""The temperatures the fit may choose: far wider than any sane model needs, and bounded so a
degenerate split (every row right, say) cannot send T to 0 or infinity."""
METHOD = "temperature scaling per level (Guo et al. 2017), NLL on held-out rows"


def apply_temperatures(
    levels: Sequence[np.ndarray], temperatures: Sequence[float]
) -> list[np.ndarray]:
    """Per level, softmax(log p / T) as float32; a level with T = 1 is returned as it is.

    Log-probabilities use `decode.log_probs` (floor 1e-12), as decoding does, so fitting,
    scaling and decoding agree to the last bit. Equal to softmax(logits / T) up to that floor.
    """
    out = []
    for p, t in zip(levels, temperatures, strict=True):
        if t == 1.0:
            out.append(p)
            continue
        z = log_probs(p) / float(t)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out.append((e / e.sum(axis=1, keepdims=True)).astype(np.float32))
    return out


def _nll(lp: np.ndarray, y: np.ndarray, beta: float) -> float:
    """Mean negative log-likelihood of classes `y` under softmax(beta * lp)."""
    z = beta * lp
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under the level's probabilities at `temperature`."""
    return _nll(log_probs(probs), np.asarray(labels, dtype=np.int64), 1.0 / temperature)


def fit_temperature(probs: np.ndarray, labels: np.ndarray, iterations: int = 80) -> float:
    """The T in `T_RANGE` minimising the NLL of `labels` under softmax(log `probs` / T).

    Args:
        probs: (N, C) class probabilities of one level (rows sum to 1).
        labels: (N,) true class per row.
    """
    return fit_temperature_logp(log_probs(probs), labels, iterations)


def fit_temperature_logp(logp: np.ndarray, labels: np.ndarray, iterations: int = 80) -> float:
    """`fit_temperature` on log-probabilities the caller floored its own way.

    The NLL is convex in beta = 1/T (a log-sum-exp of lines in beta minus a line), hence
    unimodal in log beta: a golden-section search over log beta finds the minimum to ~1e-12
    in log space without a gradient or an optimiser dependency.
    """
    lp = np.asarray(logp, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    lo, hi = math.log(1.0 / T_RANGE[1]), math.log(1.0 / T_RANGE[0])
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(lp, y, math.exp(a)), _nll(lp, y, math.exp(b))
    for _ in range(iterations):
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(lp, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(lp, y, math.exp(b))
    return float(1.0 / math.exp((lo + hi) / 2.0))


def confidence_bin(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The equal-width bin of each confidence in [0, 1] (1 falls in the last bin): the bins of
    the ECE and of `evaluate`'s reliability table."""
    return np.minimum((np.asarray(confidence) * bins).astype(np.int64), bins - 1)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the mean over equal-width confidence bins of |accuracy - mean confidence|, weighted
    by the bin's share of rows (0 for no rows). A confidence of exactly 1 falls in the last bin.
    """
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    right = np.asarray(correct, dtype=np.float64)
    if conf.size == 0:
        return 0.0
    which = confidence_bin(conf, bins)
    # per bin |sum(correct) - sum(confidence)| / N = (bin's share) * |accuracy - confidence|
    gap = np.abs(
        np.bincount(which, weights=right, minlength=bins)
        - np.bincount(which, weights=conf, minlength=bins)
    )
    return float(gap.sum() / conf.size)


def path_confidence(
    leaves: LeafTable, levels: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The best valid path of each row (N, L) and its confidence (N,): the product of its levels'
    probabilities, as `Tagger.decode` reports it (`top_k[0].score`) and `label` thresholds it."""
    scores = leaves.path_log_scores(levels)
    best = scores.argmax(axis=1)
    conf = np.exp(scores[np.arange(len(best)), best])
    return leaves.index[:, best].T, conf


def path_ece(
    leaves: LeafTable, levels: Sequence[np.ndarray], truth: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of the path confidence against whole-path correctness (`truth`: (N, L), -1 below the
    path's depth, as `Taxonomy.encode` pads)."""
    paths, conf = path_confidence(leaves, levels)
    return expected_calibration_error(conf, (paths == truth).all(axis=1), bins)


@dataclass
class TemperatureFit:
    """What a fit chose and what it bought, as model.json's `temperature_fit` holds it.

    Attributes:
        temperatures: one per level (1.0 where kept).
        rows: held-out rows the fit saw, per level (rows whose path reaches the level).
        nll_before, nll_after: per level, mean NLL of the true class at T = 1 and at the fit.
        ece_before, ece_after: ECE (`ECE_BINS` bins) of the path confidence at T = 1 and after.
        notes: why a level kept T = 1, if one did.
    """

    level_names: tuple[str, ...]
    temperatures: list[float]
    rows: list[int]
    nll_before: list[float | None]
    nll_after: list[float | None]
    ece_before: float | None
    ece_after: float | None
    notes: list[str] = field(default_factory=list)

    def to_json(self, **context: Any) -> dict[str, Any]:
        """The JSON record; `context` (split, dataset, created) is written first."""

        def by_level(values: Sequence[Any]) -> dict[str, Any]:
            return {
                n: (None if v is None else round(float(v), 6))
                for n, v in zip(self.level_names, values, strict=True)
            }

        return {
            **context,
            "method": METHOD,
            "temperature": by_level(self.temperatures),
            "rows": dict(zip(self.level_names, self.rows, strict=True)),
            "nll": {"before": by_level(self.nll_before), "after": by_level(self.nll_after)},
            "ece_path": {
                "bins": ECE_BINS,
                "before": None if self.ece_before is None else round(self.ece_before, 6),
                "after": None if self.ece_after is None else round(self.ece_after, 6),
            },
            "note": "; ".join(self.notes),
        }


def fit_temperatures(
    taxonomy: Taxonomy,
    levels: Sequence[np.ndarray],
    truth: np.ndarray,
    *,
    min_rows: int = MIN_FIT_ROWS,
) -> TemperatureFit:
    """Fit one temperature per level on held-out rows, and measure the path ECE before and after.

    Args:
        levels: per level, (N, C_l) probabilities at T = 1 (the model's own softmax).
        truth: (N, L) true class per level, -1 below each path's depth.
        min_rows: a level with fewer rows keeps T = 1 (and says so in `notes`).
    """
    truth = np.asarray(truth, dtype=np.int64).reshape(-1, taxonomy.depth)
    temps, rows, before, after, notes = [], [], [], [], []
    for lvl, p in enumerate(levels):
        keep = truth[:, lvl] >= 0
        n = int(keep.sum())
        rows.append(n)
        if n < min_rows:
            temps.append(1.0)
            before.append(nll(p[keep], truth[keep, lvl]) if n else None)
            after.append(before[-1])
            notes.append(
                f"{taxonomy.level_names[lvl]}: {n} held-out rows (< {min_rows}), T kept at 1.0; "
                "refit with `fashion-tagger calibrate` on a larger split"
            )
            continue
        t = fit_temperature(p[keep], truth[keep, lvl])
        if not T_RANGE[0] * 1.01 < t < T_RANGE[1] / 1.01:
            notes.append(
                f"{taxonomy.level_names[lvl]}: T = {t:.3g} is at the edge of {T_RANGE}: the "
                "model is (almost) always right or wrong on these rows; fit on a held-out split"
            )
        temps.append(t)
        before.append(nll(p[keep], truth[keep, lvl]))
        after.append(nll(p[keep], truth[keep, lvl], t))
    ece_before = ece_after = None
    if len(truth):
        leaves = LeafTable.from_taxonomy(taxonomy)
        ece_before = path_ece(leaves, levels, truth)
        ece_after = path_ece(leaves, apply_temperatures(levels, temps), truth)
    return TemperatureFit(
        tuple(taxonomy.level_names), temps, rows, before, after, ece_before, ece_after, notes
    )


def kept(taxonomy: Taxonomy, reason: str) -> TemperatureFit:
    """The record of no fit at all (no held-out split): T = 1 everywhere, and why."""
    depth = taxonomy.depth
    return TemperatureFit(
        tuple(taxonomy.level_names), [1.0] * depth, [0] * depth, [None] * depth, [None] * depth,
        None, None, [reason],
    )  # fmt: skip
