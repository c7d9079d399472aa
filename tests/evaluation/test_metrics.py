"""Metrics against scikit-learn and hand computations, on small hand-made cases."""

import math

import numpy as np
import pytest
from decode_reference import best_path
from sklearn import metrics as skm

from fashion_tagger.evaluation import hierarchy, metrics
from fashion_tagger.evaluation.scoring import Truth, encode_truth, score
from fashion_tagger.model.decode import LeafTable
from fashion_tagger.taxonomy import Taxonomy

# 5 classes; class 3 is never predicted, class 4 never true nor predicted
Y_TRUE = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 0])
Y_PRED = np.array([0, 1, 1, 1, 2, 2, 0, 1, 2, 0])
SCORES = np.array(
    [
        [0.6, 0.1, 0.1, 0.15, 0.05],
        [0.3, 0.4, 0.1, 0.15, 0.05],
        [0.1, 0.5, 0.2, 0.15, 0.05],
        [0.2, 0.45, 0.2, 0.1, 0.05],
        [0.1, 0.3, 0.35, 0.2, 0.05],
        [0.05, 0.1, 0.7, 0.1, 0.05],
        [0.4, 0.05, 0.3, 0.2, 0.05],
        [0.1, 0.35, 0.3, 0.2, 0.05],
        [0.1, 0.2, 0.35, 0.3, 0.05],
        [0.5, 0.2, 0.1, 0.15, 0.05],
    ]
)


def test_single_label_matches_sklearn():
    s = metrics.single_label_summary(Y_TRUE, SCORES, Y_PRED)
    assert s["n"] == 10
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(Y_TRUE, Y_PRED))
    kw = {"average": "weighted", "zero_division": 0}
    assert s["OP"] == pytest.approx(skm.precision_score(Y_TRUE, Y_PRED, **kw))
    assert s["OR"] == pytest.approx(skm.recall_score(Y_TRUE, Y_PRED, **kw))
    assert s["OF1"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, **kw))
    assert s["macro_f1"] == pytest.approx(
        skm.f1_score(Y_TRUE, Y_PRED, average="macro", zero_division=0)
    )
    for k in (1, 2, 3):
        assert metrics.top_k_accuracy(Y_TRUE, SCORES, k) == pytest.approx(
            skm.top_k_accuracy_score(Y_TRUE, SCORES, k=k, labels=range(5))
        )
    assert metrics.top_k_accuracy(Y_TRUE, SCORES, 5) == 1.0
    # argmax is the default prediction
    assert metrics.single_label_summary(Y_TRUE, SCORES)["accuracy"] == pytest.approx(
        np.mean(SCORES.argmax(1) == Y_TRUE)
    )


def test_per_class_and_confusion_match_sklearn():
    pc = metrics.per_class(Y_TRUE, Y_PRED, 5)
    p, r, f, s = skm.precision_recall_fscore_support(
        Y_TRUE, Y_PRED, labels=range(5), zero_division=0
    )
    np.testing.assert_allclose(pc.precision, p)
    np.testing.assert_allclose(pc.recall, r)
    np.testing.assert_allclose(pc.f1, f)
    np.testing.assert_array_equal(pc.support, s)
    assert pc.precision[3] == 0 and pc.recall[3] == 0  # true but never predicted
    assert pc.support[4] == 0 and pc.predicted[4] == 0  # absent everywhere
    np.testing.assert_array_equal(
        metrics.confusion_matrix(Y_TRUE, Y_PRED, 5),
        skm.confusion_matrix(Y_TRUE, Y_PRED, labels=range(5)),
    )


def test_no_prediction_at_a_level_is_a_miss():
    # -1: the decoded path stopped above this level
    pc = metrics.per_class([0, 0, 1], [0, -1, 1], 2)
    np.testing.assert_allclose(pc.recall, [0.5, 1.0])
    np.testing.assert_allclose(pc.precision, [1.0, 1.0])
    assert metrics.accuracy([0, 0, 1], [0, -1, 1]) == pytest.approx(2 / 3)


def test_empty_inputs_give_zero_not_nan():
    s = metrics.single_label_summary(np.zeros(0, int), np.zeros((0, 3)), np.zeros(0, int))
    assert s == {
        "n": 0,
        "accuracy": 0.0,
        "top5_accuracy": 0.0,
        "OP": 0.0,
        "OR": 0.0,
        "OF1": 0.0,
        "macro_f1": 0.0,
    }


# attributes: 4 images x 3 labels; image 3 has no true attribute; label 2 never true
A_TRUE = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
A_SCORE = np.array([[0.9, 0.8, 0.1], [0.7, 0.76, 0.2], [0.3, 0.95, 0.8], [0.2, 0.1, 0.05]])


def test_paired_comparison_counts_disagreements_and_matches_binomtest():
    from scipy.stats import binomtest

    # 20 examples: both right on 10, both wrong on 2, only A right on 6, only B right on 2
    a = np.array([1] * 10 + [0] * 2 + [1] * 6 + [0] * 2, dtype=bool)
    b = np.array([1] * 10 + [0] * 2 + [0] * 6 + [1] * 2, dtype=bool)
    r = metrics.paired_comparison(a, b)
    assert (r["n"], r["a_only"], r["b_only"]) == (20, 6, 2)
    assert r["diff"] == pytest.approx(0.2)
    # d has 6 ones, 2 minus-ones, 12 zeros: var = 8/20 - 0.2^2 = 0.36, se = 0.6 / sqrt(20)
    assert r["ci95_high"] - r["diff"] == pytest.approx(1.96 * 0.6 / math.sqrt(20))
    assert r["p_value"] == pytest.approx(binomtest(2, 8, 0.5).pvalue)  # 0.2890625
    swapped = metrics.paired_comparison(b, a)
    assert swapped["diff"] == pytest.approx(-0.2)
    assert swapped["p_value"] == pytest.approx(r["p_value"])
    # thousands of disagreements: exact arithmetic, no overflow, still equal to scipy
    rng = np.random.default_rng(0)
    a, b = rng.random(5000) < 0.85, rng.random(5000) < 0.84
    r = metrics.paired_comparison(a, b)
    assert r["p_value"] == pytest.approx(binomtest(r["b_only"], r["a_only"] + r["b_only"]).pvalue)
    same = metrics.paired_comparison(a, a)
    assert (same["diff"], same["p_value"], same["ci95_low"]) == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="shapes"):
        metrics.paired_comparison(a, b[:10])


def test_multilabel_overall_is_micro_as_sklearn():
    for thr in (0.75, np.array([0.6, 0.9, 0.5])):
        pred = np.greater_equal(A_SCORE, thr)
        got = metrics.multilabel_overall(A_TRUE, A_SCORE, thr)
        kw = {"average": "micro", "zero_division": 0}
        assert got["OP"] == pytest.approx(skm.precision_score(A_TRUE, pred, **kw))
        assert got["OR"] == pytest.approx(skm.recall_score(A_TRUE, pred, **kw))
        assert got["OF1"] == pytest.approx(skm.f1_score(A_TRUE, pred, **kw))
    # by hand at 0.75: predicted (0,0) (0,1) (1,1) (2,1) (2,2): 3 right of 5; 3 of 4 found
    got = metrics.multilabel_overall(A_TRUE, A_SCORE, 0.75)
    assert got["OP"] == pytest.approx(3 / 5) and got["OR"] == pytest.approx(3 / 4)
    # nothing predicted: zeros, not NaN
    assert metrics.multilabel_overall(A_TRUE, A_SCORE, 1.1) == {"OP": 0.0, "OR": 0.0, "OF1": 0.0}


def test_at_k_by_hand_and_images_without_labels():
    got = metrics.multilabel_at_k(A_TRUE, A_SCORE)
    # image 0 k=2 top {0,1} 2 hits; image 1 k=1 top {1} 0 hits; image 2 k=1 top {1} 1 hit
    assert got["P@k"] == pytest.approx(3 / 4)
    assert got["R@k"] == pytest.approx(3 / 4)
    assert got["F1@k"] == pytest.approx(3 / 4)
    assert got["n_images_without_labels"] == 1
    # only images without labels: zeros
    none = metrics.multilabel_at_k(np.zeros((2, 3), bool), A_SCORE[:2])
    assert none["P@k"] == 0.0 and none["n_images_without_labels"] == 2


def test_average_precision_matches_sklearn_including_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(30) < 0.3
        s = np.round(rng.random(30), 1)  # many ties
        if y.any():
            assert metrics.average_precision(y, s) == pytest.approx(
                skm.average_precision_score(y, s)
            )
    aps = metrics.average_precisions(A_TRUE, A_SCORE)
    assert math.isnan(aps[2])  # no positive
    np.testing.assert_allclose(
        aps[:2], [skm.average_precision_score(A_TRUE[:, j], A_SCORE[:, j]) for j in range(2)]
    )
    assert metrics.mean_average_precision(aps) == pytest.approx(np.mean(aps[:2]))
    assert metrics.mean_average_precision(np.array([np.nan])) == 0.0


def test_per_label_matches_sklearn():
    pl = metrics.per_label(A_TRUE, A_SCORE, 0.75)
    p, r, f, s = skm.precision_recall_fscore_support(A_TRUE, A_SCORE >= 0.75, zero_division=0)
    np.testing.assert_allclose(pl.precision, p)
    np.testing.assert_allclose(pl.recall, r)
    np.testing.assert_allclose(pl.f1, f)
    np.testing.assert_array_equal(pl.support, s)


def test_best_threshold_max_f1_and_target_precision():
    y = np.array([1, 1, 0, 1, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.1])
    # brute force over candidate thresholds
    f1s = {t: skm.f1_score(y, s >= t) for t in s}
    thr, p, r, f, note = metrics.best_threshold(y, s)
    assert f == pytest.approx(max(f1s.values())) and thr == 0.6 and note == ""
    assert (p, r) == (pytest.approx(0.75), pytest.approx(1.0))
    # the lowest threshold with precision >= 0.9 is 0.8 (2/2); 0.6 gives only 3/4
    thr, p, r, _, note = metrics.best_threshold(y, s, target_precision=0.9)
    assert thr == 0.8 and p == 1.0 and r == pytest.approx(2 / 3) and note == ""
    # unreachable: max-F1 with a note
    y2 = np.array([0, 1, 1, 0, 0, 0], bool)
    s2 = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    thr, p, *_, note = metrics.best_threshold(y2, s2, target_precision=0.99)
    assert "unreachable" in note and p < 0.99 and thr == 0.7
    # no positive at all: default kept
    thr, *_, note = metrics.best_threshold(np.zeros(3, bool), s2[:3])
    assert thr == metrics.PAPER_THRESHOLD and "no positive" in note
    # a model that ranks the one positive last: max F1 would label every image; keep the default
    y3 = np.array([0, 0, 0, 0, 1], bool)
    s3 = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    thr, p, r, f, note = metrics.best_threshold(y3, s3)
    assert thr == metrics.PAPER_THRESHOLD and "every image" in note
    assert (p, r, f) == (0.0, 0.0, 0.0)  # the numbers at the kept default (0.9, 0.8 predicted)


# -- hierarchy ----------------------------------------------------------------------------------
PATHS = [
    ["Apparel", "Topwear", "Shirts"],
    ["Apparel", "Topwear", "Tshirts"],
    ["Apparel", "Bottomwear", "Jeans"],
    ["Footwear", "Shoes", "Sneakers"],
    ["Footwear", "Other"],  # a leaf at level 1
]


@pytest.fixture
def tax():
    return Taxonomy.from_paths(PATHS, ["master", "sub", "article"])


def _enc(tax, *paths):
    return np.array([tax.encode(p) for p in paths])


def test_hierarchical_prf_by_hand(tax):
    true = _enc(tax, PATHS[0], PATHS[3], PATHS[4])
    pred = _enc(tax, PATHS[1], PATHS[3], PATHS[2])
    # |P∩T|: 2 + 3 + 0 = 5; |P| = 3 + 3 + 3 = 9; |T| = 3 + 3 + 2 = 8
    got = hierarchy.hierarchical_prf(true, pred)
    assert got["hP"] == pytest.approx(5 / 9) and got["hR"] == pytest.approx(5 / 8)
    assert got["hF1"] == pytest.approx(2 * (5 / 9) * (5 / 8) / (5 / 9 + 5 / 8))
    # set-based: a per-level argmax that is not a path still earns nodes it names rightly
    bad = true.copy()
    bad[0, 0] = tax.encode(PATHS[3])[0]  # wrong top level, right sub/article nodes
    assert hierarchy.hierarchical_prf(true, bad)["hP"] == pytest.approx(7 / 8)


def test_valid_paths_and_error_split(tax):
    a, b, c = tax.encode(PATHS[0]), tax.encode(PATHS[3]), tax.encode(PATHS[4])
    assert hierarchy.is_valid_path(tax, a) and hierarchy.is_valid_path(tax, c)
    # Footwear > Other is a leaf: whatever the deeper argmax says, the walk stops there
    assert hierarchy.is_valid_path(tax, [c[0], c[1], 0])
    assert not hierarchy.is_valid_path(tax, [a[0], b[1], b[2]])  # Shoes is not under Apparel
    assert not hierarchy.is_valid_path(tax, [a[0], -1, -1])  # stops above a leaf
    rate = hierarchy.valid_path_rate(tax, np.array([a, b, [a[0], b[1], b[2]], c]))
    assert rate == pytest.approx(3 / 4)

    true = _enc(tax, PATHS[0], PATHS[0], PATHS[3], PATHS[4], PATHS[4])
    pred = _enc(tax, PATHS[0], PATHS[1], PATHS[2], PATHS[3], PATHS[0])
    e = hierarchy.error_split(true, pred)
    # row1: Shirts->Tshirts under Topwear; row3: Footwear>Other -> Footwear>Shoes>Sneakers
    assert e["correct"] == 1 and e["right_parent_wrong_leaf"] == 2 and e["wrong_branch"] == 2
    assert e["right_parent_wrong_leaf_share"] == pytest.approx(0.5)
    assert e["first_wrong_level"] == [2, 1, 1]


def test_consistent_paths_equal_taxonomy_best_path(tax):
    rng = np.random.default_rng(1)
    levels = [rng.dirichlet(np.ones(n), size=40) for n in tax.sizes]
    got = LeafTable.from_taxonomy(tax).best_paths(levels)
    for i in range(40):
        idx, _ = best_path(tax, [np.log(p[i]) for p in levels])
        assert list(got[i][: len(idx)]) == idx and (got[i][len(idx) :] == -1).all()


def test_score_on_a_fake_model(tax):
    labels = [PATHS[0], PATHS[1], PATHS[3], PATHS[4], ["Unknown", "x"]]
    attrs = [["colour=Red"], [], ["colour=Red", "season=Summer"], ["other=1"], []]
    names = ["colour=Red", "season=Summer", "usage=Casual"]
    truth, keep = encode_truth(tax, names, labels, attrs, [f"{i}.jpg" for i in range(5)])
    assert keep.tolist() == [True, True, True, True, False]
    assert truth.attributes.tolist() == [
        [True, False, False],
        [False, False, False],
        [True, True, False],
        [False, False, False],
    ]
    # a model that is right on rows 0, 2, 3 and puts row 1 under the right parent, wrong leaf
    levels = [np.full((4, n), 0.01) for n in tax.sizes]
    for i, p in enumerate([PATHS[0], PATHS[0], PATHS[3], PATHS[4]]):
        for lvl, c in enumerate(tax.encode(p)):
            if c >= 0:
                levels[lvl][i, c] = 0.9
    attr = np.array([[0.9, 0.1, 0.2], [0.8, 0.2, 0.1], [0.6, 0.9, 0.1], [0.1, 0.1, 0.9]])
    out = score(tax, levels, attr, truth, names, [0.5, 0.5, 0.5])
    lv = out["levels"]
    assert [b["n"] for b in lv] == [4, 4, 3]  # Footwear > Other has no article level
    assert lv[0]["accuracy"] == 1.0 and lv[1]["accuracy"] == 1.0
    assert lv[2]["accuracy"] == pytest.approx(2 / 3)
    assert lv[2]["confused_pairs"][0] == {
        "true": "Apparel > Topwear > Tshirts",
        "predicted": "Apparel > Topwear > Shirts",
        "count": 1,
    }
    h = out["hierarchy"]
    assert h["valid_path_rate"]["consistent"] == 1.0
    assert h["errors"]["right_parent_wrong_leaf"] == 1 and h["errors"]["wrong_branch"] == 0
    assert h["consistent"]["hP"] == pytest.approx(10 / 11)
    a = out["attributes"]
    assert a["at_0.75"]["OP"] == pytest.approx(2 / 4) and a["at_0.75"]["OR"] == pytest.approx(2 / 3)
    assert a["at_thresholds"]["OP"] == pytest.approx(3 / 5)
    assert a["per_attribute"][2]["ap"] is None and a["n_attributes_with_positives"] == 2
    assert a["at_k"]["n_images_without_labels"] == 2
    assert out["top_losses"][0]["image"] == "1.jpg" and not out["top_losses"][0]["correct"]
    assert out["top_losses"][0]["predicted"][2]["label"] == "Shirts"


def test_truth_shapes_with_no_attributes(tax):
    truth, _ = encode_truth(tax, [], [PATHS[0]], [["a=b"]], ["x.jpg"])
    assert isinstance(truth, Truth) and truth.attributes.shape == (1, 0)
    out = score(tax, [np.ones((1, n)) / n for n in tax.sizes], np.zeros((1, 0)), truth, [], [])
    assert out["attributes"]["mAP"] == 0.0 and out["attributes"]["at_0.75"]["OP"] == 0.0


def test_top_losses_show_each_photo_once(tax):
    # the same photo listed twice (two catalog rows) is shown once, worst loss first
    truth, _ = encode_truth(tax, [], [PATHS[0], PATHS[0], PATHS[3]], [[], [], []], ["a", "a", "b"])
    levels = [np.full((3, n), 1.0 / n) for n in tax.sizes]
    out = score(tax, levels, np.zeros((3, 0)), truth, [], [])
    assert [t["image"] for t in out["top_losses"]] == ["a", "b"]
