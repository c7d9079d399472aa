"""Temperature scaling (`model.calibration`) and its place in the spec (model.json `temperature`).

The fit is checked against models whose miscalibration is known: labels drawn from softmax(z)
while the "model" reports softmax(k z), so the right temperature is exactly k.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from spec_fixtures import make_spec

from fashion_tagger.errors import RunDirError
from fashion_tagger.model import ModelSpec
from fashion_tagger.model import calibration as cal
from fashion_tagger.model.decode import LeafTable
from fashion_tagger.taxonomy import Taxonomy


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _miscalibrated(k: float, n: int = 20000, classes: int = 8, seed: int = 0):
    """(reported probabilities, labels): labels ~ softmax(z), the model says softmax(k z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, classes))
    p_true = _softmax(z)
    labels = (p_true.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return _softmax(k * z).astype(np.float32), labels


@pytest.mark.parametrize("k", [0.5, 0.8, 1.0, 1.6, 3.0])
def test_fit_recovers_the_known_temperature(k):
    """Overconfident (k > 1) and underconfident (k < 1) models get T = k back."""
    probs, labels = _miscalibrated(k)
    t = cal.fit_temperature(probs, labels)
    assert t == pytest.approx(k, rel=0.04)
    # the fitted T is the NLL's minimum: a step either side is worse
    assert cal.nll(probs, labels, t) < cal.nll(probs, labels, t * 1.1)
    assert cal.nll(probs, labels, t) < cal.nll(probs, labels, t / 1.1)


def test_fit_is_bounded_when_every_row_is_right():
    """No finite optimum (always right): the fit stops at the sharpest allowed T, not at 0."""
    probs = np.tile(np.array([[0.7, 0.2, 0.1]], dtype=np.float32), (100, 1))
    assert cal.fit_temperature(probs, np.zeros(100, dtype=int)) == pytest.approx(
        cal.T_RANGE[0], rel=1e-3
    )


def _tax() -> Taxonomy:
    paths = [("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2"), ("c",)]
    return Taxonomy.from_paths(paths, ["top", "leaf"])


def _levels_from_leaf_logits(z: np.ndarray, tax: Taxonomy) -> list[np.ndarray]:
    """Per-level marginals of a leaf distribution softmax(z) (rows of z over tax's leaves)."""
    leaves = LeafTable.from_taxonomy(tax)
    p = _softmax(z)
    out = []
    for lvl, n in enumerate(tax.sizes):
        m = np.zeros((len(leaves), n))
        for j, path in enumerate(leaves.paths):
            if lvl < len(path):
                m[j, path[lvl]] = 1.0
        q = p @ m
        out.append((q / q.sum(axis=1, keepdims=True)).astype(np.float32))
    return out


def test_fit_temperatures_lowers_the_path_ece_of_an_overconfident_model():
    tax = _tax()
    rng = np.random.default_rng(1)
    n, k = 6000, 2.5
    z = rng.normal(0.0, 1.5, size=(n, 5))
    leaf = (_softmax(z).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    truth = LeafTable.from_taxonomy(tax).index[:, leaf].T
    levels = _levels_from_leaf_logits(k * z, tax)  # overconfident by k
    fit = cal.fit_temperatures(tax, levels, truth)
    assert all(t > 1.5 for t in fit.temperatures)  # it softens both levels
    # the path confidence multiplies its levels as if they were independent (a2 implies a),
    # so calibrated levels leave a smaller, underconfident gap: ECE halves, not vanishes
    assert fit.ece_before > 0.15 and fit.ece_after < fit.ece_before / 2
    assert all(a < b for a, b in zip(fit.nll_after, fit.nll_before, strict=True))
    assert fit.rows == [n, int((truth[:, 1] >= 0).sum())]  # "c" stops above the leaf level
    leaves = LeafTable.from_taxonomy(tax)
    scaled = cal.apply_temperatures(levels, fit.temperatures)
    assert cal.path_ece(leaves, scaled, truth) == pytest.approx(fit.ece_after)
    record = fit.to_json(split="val")
    assert record["split"] == "val" and record["note"] == ""
    assert set(record["temperature"]) == {"top", "leaf"}
    assert record["ece_path"]["before"] > record["ece_path"]["after"]
    json.dumps(record)  # JSON-ready


def test_one_level_taxonomy_ends_calibrated():
    """With one level the path confidence is the level's: scaling leaves almost no gap."""
    tax = Taxonomy.from_paths([(c,) for c in "abcdefgh"], ["kind"])
    probs, labels = _miscalibrated(2.0, n=20000)
    truth = LeafTable.from_taxonomy(tax).index[:, labels].T
    fit = cal.fit_temperatures(tax, [probs], truth)
    assert fit.temperatures[0] == pytest.approx(2.0, rel=0.04)
    assert fit.ece_before > 0.1 and fit.ece_after < 0.015


def test_small_levels_keep_t_one_and_say_so():
    tax = _tax()
    rng = np.random.default_rng(2)
    levels = _levels_from_leaf_logits(rng.normal(size=(30, 5)) * 3, tax)
    truth = LeafTable.from_taxonomy(tax).index[:, np.arange(30) % 5].T
    fit = cal.fit_temperatures(tax, levels, truth)
    assert fit.temperatures == [1.0, 1.0]
    assert "top: 30 held-out rows (< 50)" in "; ".join(fit.notes)
    assert fit.ece_before == fit.ece_after  # measured all the same
    none = cal.kept(tax, "no val rows")
    assert none.temperatures == [1.0, 1.0] and none.to_json()["note"] == "no val rows"


def test_ece_on_known_cases():
    # two bins: conf 0.9 right 9 of 10 (gap 0), conf 0.25 right 2 of 4 (gap 0.25)
    conf = np.array([0.9] * 10 + [0.25] * 4)
    right = np.array([1] * 9 + [0] + [1, 1, 0, 0])
    assert cal.expected_calibration_error(conf, right) == pytest.approx(4 / 14 * 0.25)
    assert cal.expected_calibration_error(np.ones(5), np.ones(5)) == 0.0  # 1.0: last bin
    assert cal.expected_calibration_error(np.ones(4), np.zeros(4)) == 1.0
    assert cal.expected_calibration_error(np.array([]), np.array([])) == 0.0


probs_strategy = arrays(
    np.float64, st.tuples(st.integers(1, 6), st.integers(2, 7)), elements=st.floats(-6, 6)
).map(lambda z: _softmax(z).astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(probs_strategy, st.floats(0.1, 10.0), st.floats(0.1, 10.0))
def test_temperature_keeps_argmax_and_composes(p, t1, t2):
    """softmax(log p / T): rows sum to 1, argmax unchanged, T = 1 is the identity, two
    temperatures compose as their product, and T > 1 never sharpens the top class."""
    (a,) = cal.apply_temperatures([p], [t1])
    assert np.allclose(a.sum(axis=1), 1.0, atol=1e-5)
    top = p.max(axis=1, keepdims=True)
    ties = (p >= top - 1e-6).sum(axis=1) > 1
    assert (a.argmax(axis=1) == p.argmax(axis=1))[~ties].all()
    assert cal.apply_temperatures([p], [1.0])[0] is p
    (ab,) = cal.apply_temperatures(cal.apply_temperatures([p], [t1]), [t2])
    (direct,) = cal.apply_temperatures([p], [t1 * t2])
    if p.min() > 1e-6 and a.min() > 1e-6:  # away from decoding's log floor
        assert np.allclose(ab, direct, atol=1e-4)
    if t1 > 1:
        assert (a.max(axis=1) <= p.max(axis=1) + 1e-6).all()


def test_temperature_on_probabilities_equals_temperature_on_logits():
    z = np.random.default_rng(3).normal(0, 3, size=(50, 9))
    (scaled,) = cal.apply_temperatures([_softmax(z).astype(np.float32)], [0.7])
    assert np.allclose(scaled, _softmax(z / 0.7), atol=1e-5)


def test_path_confidence_is_the_product_of_the_best_paths_levels():
    tax = _tax()
    levels = [
        np.array([[0.6, 0.3, 0.1]], dtype=np.float32),
        np.array([[0.1, 0.2, 0.5, 0.2]], dtype=np.float32),  # a1, a2, b1, b2
    ]
    paths, conf = cal.path_confidence(LeafTable.from_taxonomy(tax), levels)
    # a>a2: 0.6*0.2 = 0.12, b>b1: 0.3*0.5 = 0.15, c: 0.1 (depth 1)
    assert tax.decode(paths[0].tolist()) == ("b", "b1")
    assert conf[0] == pytest.approx(0.15, rel=1e-5)


# -- the spec --------------------------------------------------------------------------------
def test_spec_temperatures_default_to_one_and_round_trip():
    spec = make_spec()
    assert spec.temperatures == (1.0, 1.0, 1.0)
    d = spec.to_json()
    assert d["temperature"] == {"master": 1.0, "sub": 1.0, "article": 1.0}
    hot = ModelSpec.from_json({**d, "temperature": {"master": 0.5, "sub": 1.25, "article": 2}})
    assert hot.temperatures == (0.5, 1.25, 2.0)
    assert ModelSpec.from_json(hot.to_json()) == hot
    assert ModelSpec.from_json({**d, "temperature": 0.8}).temperatures == (0.8,) * 3


def test_old_model_json_without_temperature_loads_with_t_one():
    d = make_spec().to_json()
    del d["temperature"]
    assert ModelSpec.from_json(d).temperatures == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "value",
    [
        {"master": 0.0, "sub": 1.0, "article": 1.0},
        {"master": -1.0, "sub": 1.0, "article": 1.0},
        {"master": math.inf, "sub": 1.0, "article": 1.0},
        {"master": 1.0, "sub": 1.0},  # a level missing
        {"master": 1.0, "sub": 1.0, "article": 1.0, "colour": 1.0},
        {"master": "hot", "sub": 1.0, "article": 1.0},
        [1.0, 1.0, 1.0],
        "1.0",
        0,
    ],
)
def test_bad_temperatures_are_a_clear_error(value):
    d = make_spec().to_json()
    with pytest.raises(RunDirError, match="temperature"):
        ModelSpec.from_json({**d, "temperature": value})


def test_spec_refuses_a_wrong_number_of_temperatures():
    from dataclasses import replace

    with pytest.raises(RunDirError, match="2 temperatures for 3 taxonomy levels"):
        replace(make_spec(), temperatures=(1.0, 2.0))
