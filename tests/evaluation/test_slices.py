"""Metrics by slice: Wilson and Newcombe intervals against published values, slice blocks by hand,
the report's section."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics as skm

from fashion_tagger.evaluation import metrics, report
from fashion_tagger.evaluation.slices import SliceSpec, slice_block, slice_metrics


def test_wilson_matches_newcombe_1998():
    # Newcombe (1998), Stat Med 17:857, table I, method 3
    assert metrics.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert metrics.wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert metrics.wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert metrics.wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)


def test_difference_matches_newcombe_1998():
    # Newcombe (1998), Stat Med 17:873, table II, method 10
    d, low, high = metrics.proportion_difference(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and (low, high) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    _, low, high = metrics.proportion_difference(9, 10, 3, 10)
    assert (low, high) == pytest.approx((0.1705, 0.8090), abs=1e-4)
    assert metrics.proportion_difference(1, 0, 1, 2) == (0.0, -1.0, 1.0)


@given(k=st.integers(0, 500), extra=st.integers(0, 500))
def test_wilson_brackets_the_estimate(k, extra):
    n = k + extra
    low, high = metrics.wilson_interval(k, n)
    assert 0.0 <= low <= high <= 1.0
    if n:
        assert low - 1e-12 <= k / n <= high + 1e-12


@given(k1=st.integers(0, 60), e1=st.integers(0, 60), k2=st.integers(0, 60), e2=st.integers(0, 60))
def test_difference_interval_brackets_the_gap(k1, e1, k2, e2):
    n1, n2 = k1 + e1, k2 + e2
    d, low, high = metrics.proportion_difference(k1, n1, k2, n2)
    assert -1.0 - 1e-12 <= low <= d <= high <= 1.0 + 1e-12


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 200), rng.integers(0, 4, 200)
    assert metrics.macro_f1(y, p, 6) == pytest.approx(skm.f1_score(y, p, average="macro"))


def _toy():
    """40 rows, 2 levels; colour Pink (10 rows) is right at level 0 only 2 times in 10, the
    others 27 of 30; one row has no colour, one has two; level 1 absent on the last 5 rows."""
    truth = np.zeros((40, 2), dtype=np.int64)
    truth[:, 0] = np.arange(40) % 2
    truth[:, 1] = np.arange(40) % 3
    truth[35:, 1] = -1
    pred = truth.copy()
    pred[2:10, 0] = 1 - truth[2:10, 0]  # 8 Pink rows wrong at level 0
    pred[10:13, 0] = 1 - truth[10:13, 0]  # 3 Black rows wrong
    pred[36:, 1] = 0  # below the true path: does not count
    values = [("Pink",)] * 10 + [("Black",)] * 28 + [()] + [("Black", "Pink")]
    return SliceSpec("colour", "attribute", values), truth, pred


def test_slice_block_by_hand():
    spec, truth, pred = _toy()
    b = slice_block(spec, truth, pred, ["gender", "type"], [2, 3])
    assert list(b["values"]) == ["Black", "Pink"]  # largest first
    assert b["n_without_value"] == 1 and b["kind"] == "attribute"
    pink, black = b["values"]["Pink"], b["values"]["Black"]
    assert pink["n"] == 11 and black["n"] == 29
    assert pink["levels"]["gender"]["correct"] == 3  # rows 0, 1 and 39
    assert pink["levels"]["gender"]["accuracy"] == pytest.approx(3 / 11)
    rows = [*range(10), 39]
    y, p = truth[rows, 0], pred[rows, 0]
    assert pink["levels"]["gender"]["macro_f1"] == pytest.approx(
        skm.f1_score(y, p, average="macro")
    )
    assert black["levels"]["type"]["n"] == 29 - 4  # rows 35, 36, 37 and 39 stop at level 0
    assert black["levels"]["type"]["accuracy"] == 1.0
    # two values: Pink against the rest and Black against the rest are the first two gaps
    top = {(g["value"], g["level"]): g for g in b["gaps"][:2]}
    assert set(top) == {("Pink", "gender"), ("Black", "gender")}
    pg = top["Pink", "gender"]
    assert pg["meaningful"] and pg["gap_ci95"][1] < 0 < top["Black", "gender"]["gap_ci95"][0]
    assert pg["rest_n"] == 40 - 11 and pg["rest_accuracy"] == pytest.approx((29 - 3) / 29)
    assert all(not g["meaningful"] for g in b["gaps"] if g["level"] == "type")


def test_slice_metrics_keeps_the_order_asked_and_checks_lengths():
    spec, truth, pred = _toy()
    other = SliceSpec("year", "meta", [("2011",)] * 40)
    m = slice_metrics([other, spec], truth, pred, ["gender", "type"], [2, 3])
    assert list(m) == ["year", "colour"] and m["year"]["gaps"] == []  # no rest to compare with
    with pytest.raises(ValueError, match="slice values"):
        slice_block(SliceSpec("x", "meta", [()]), truth, pred, ["gender", "type"], [2, 3])


def test_report_section():
    spec, truth, pred = _toy()
    m = {"slices": slice_metrics([spec], truth, pred, ["gender", "type"], [2, 3])}
    html = report._slices(m)
    assert "by colour (attribute, 2 values)" in html
    assert "Pink" in html and "27.3 (9.7-56.6)" in html  # 3/11 and its Wilson interval
    assert "1 images have no colour" in html
    assert "No slices were asked for" in report._slices({})


def test_a_tiny_slice_is_never_meaningful():
    """One wrong photo against a 90 % rest: its interval excludes 0, but 1 in 10 is chance."""
    truth = np.zeros((101, 1), dtype=np.int64)
    pred = truth.copy()
    pred[:11, 0] = 1  # the odd row wrong, and 10 of the 100 others
    spec = SliceSpec("colour", "attribute", [("Peach",)] + [("Black",)] * 100)
    gaps = slice_block(spec, truth, pred, ["gender"], [2])["gaps"]
    peach = next(g for g in gaps if g["value"] == "Peach")
    assert peach["gap_ci95"][1] < 0 and not peach["meaningful"]
