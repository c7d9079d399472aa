"""Path decoding (model/decode.py): the numpy and torch twins agree, the answer is the best
valid path, and validation, evaluate, predict, ONNX and serve decode the same probabilities
to the same paths, near-ties included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from decode_reference import best_path
from hypothesis import given, settings
from hypothesis import strategies as st

from fashion_tagger.evaluation.scoring import Truth, score
from fashion_tagger.inference.onnx import path_mismatches
from fashion_tagger.inference.tagger import Probs, Tagger
from fashion_tagger.model import ModelSpec
from fashion_tagger.model.decode import LOG_FLOOR, LeafTable, log_probs
from fashion_tagger.model.load import build_model
from fashion_tagger.serving.predictor import TaggerPredictor
from fashion_tagger.taxonomy import Taxonomy
from fashion_tagger.training.config import DataConfig, ModelConfig, TrainConfig
from fashion_tagger.training.module import TaggerModule

RAGGED = Taxonomy.from_paths([("a", "x"), ("a", "y"), ("b",), ("c", "z"), ("c", "w", "deep")])


@st.composite
def trees_and_probs(draw: st.DrawFn) -> tuple[Taxonomy, list[np.ndarray]]:
    """A random ragged tree and per-level probabilities, often with exact and near ties."""
    n_paths = draw(st.integers(1, 7))
    paths = [
        tuple(f"n{draw(st.integers(0, 2))}" for _ in range(draw(st.integers(1, 3))))
        for _ in range(n_paths)
    ]
    tax = Taxonomy.from_paths(paths)
    rows = draw(st.integers(1, 5))
    grid = draw(st.sampled_from([None, 2, 4]))  # coarse grids make many exact ties
    levels = []
    for n in tax.sizes:
        raw = np.array(
            draw(st.lists(st.floats(0.0, 1.0), min_size=rows * n, max_size=rows * n)),
            dtype=np.float64,
        ).reshape(rows, n)
        if grid:
            raw = np.round(raw * grid) / grid
        raw[:, 0] += 1e-9 * draw(st.sampled_from([0, 1]))  # a near-tie with the others
        raw = raw + (raw.sum(axis=1, keepdims=True) == 0)  # no all-zero row
        levels.append((raw / raw.sum(axis=1, keepdims=True)).astype(np.float32))
    return tax, levels


@settings(max_examples=100, deadline=None)
@given(trees_and_probs())
def test_numpy_and_torch_twins_agree_and_give_the_best_valid_path(case) -> None:
    tax, levels = case
    leaves = LeafTable.from_taxonomy(tax)
    scores = leaves.path_log_scores(levels)
    twin = leaves.path_log_scores_torch([torch.from_numpy(p) for p in levels]).numpy()
    assert np.array_equal(scores, twin)
    paths = leaves.best_paths(levels)
    assert np.array_equal(paths, leaves.best_paths_torch([torch.from_numpy(p) for p in levels]))
    for i, row in enumerate(paths):
        idx, best = best_path(tax, [log_probs(p[i]) for p in levels])  # the brute-force oracle
        assert list(row[: len(idx)]) == idx and (row[len(idx) :] == -1).all()
        assert tax.contains(tax.decode(row.tolist()))
        assert scores[i].max() == pytest.approx(best)


def test_one_log_floor() -> None:
    assert log_probs(np.array([0.0, 1e-30, 0.5])).tolist() == pytest.approx(
        [math.log(LOG_FLOOR), math.log(LOG_FLOOR), math.log(0.5)]
    )


def test_best_path_is_valid_where_per_level_argmax_is_not() -> None:
    # per-level argmax: a (0.6) then z (0.9): not a path; a>x scores 0.6*0.05, c>z 0.4*0.9
    leaves = LeafTable.from_taxonomy(RAGGED)
    l0 = np.array([[0.6, 0.0, 0.4]], np.float32)  # a, b, c
    names1 = RAGGED.names[1]
    l1 = np.zeros((1, len(names1)), np.float32)
    l1[0, names1.index("x")], l1[0, names1.index("z")] = 0.05, 0.9
    l1[0] /= l1.sum()
    l2 = np.ones((1, 1), np.float32)
    got = RAGGED.decode(leaves.best_paths([l0, l1, l2])[0].tolist())
    assert got == ("c", "z")


def _spec() -> ModelSpec:
    return ModelSpec(
        model_id="m",
        backbone={"name": "simple-cnn", "pretrained": False, "in_chans": 3},
        head={"kind": "multi", "hidden": 0, "dropout": 0.0},
        input_size=(16, 16),
        channels=3,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        resize="squash",
        taxonomy=RAGGED,
        attribute_names=["colour=red"],
    )


def test_validation_evaluate_predict_onnx_and_serve_decode_alike() -> None:
    """One set of probabilities, with exact and near ties, through every stage's decoding."""
    spec = _spec()
    rng = np.random.default_rng(0)
    logits = [torch.from_numpy(rng.normal(size=(64, n)).astype(np.float32)) for n in RAGGED.sizes]
    logits[0][:8] = 0.0  # exact ties at the root
    logits[1][8:16] = logits[1][8:16, :1] + torch.tensor(1e-6)  # near-ties one level down
    attrs = torch.zeros(64, 1)
    probs = [torch.softmax(z, dim=1).numpy() for z in logits]
    outputs = [*probs, torch.sigmoid(attrs).numpy()]

    module = TaggerModule(
        build_model(spec),
        spec,
        TrainConfig(data=DataConfig(workers=0), model=ModelConfig(head="multi"), progress=False),
    )
    validation = module.predicted_paths((*logits, attrs)).numpy()

    tagger = Tagger(spec, backend=lambda x: outputs)
    predicted = [RAGGED.encode(p.labels) for p in tagger.decode(Probs(probs, outputs[-1]), top_k=1)]
    served = [
        RAGGED.encode([step["label"] for step in row["path"]])
        for row in TaggerPredictor(tagger).decode(outputs, top_k=1, names=["x"] * 64)
    ]
    assert np.array_equal(validation, np.array(predicted))
    assert np.array_equal(validation, np.array(served))
    assert np.array_equal(validation, tagger.best_paths(Probs(probs, outputs[-1])))

    truth = Truth(validation, np.zeros((64, 1), bool), [f"{i}.jpg" for i in range(64)])
    metrics = score(RAGGED, probs, outputs[-1], truth, spec.attribute_names, [0.5])
    assert metrics["hierarchy"]["exact_path_accuracy"] == 1.0  # evaluate decodes the same

    leaves = LeafTable.from_taxonomy(RAGGED)
    assert path_mismatches(leaves, outputs, outputs) == 0
    flipped = [p.copy() for p in outputs]
    flipped[0] = flipped[0][::-1].copy()  # other probabilities for most rows
    expected = int((tagger.best_paths(Probs(flipped[:-1], outputs[-1])) != validation).any(1).sum())
    assert path_mismatches(leaves, outputs, flipped) == expected > 0
