"""Tagger: preprocessing, backends, decoding to valid paths, thresholds, unreadable images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from decode_reference import best_path
from PIL import Image
from run_fixtures import shared_tiny_run
from spec_fixtures import make_spec

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.images import decode
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.inference.tagger import Probs, Tagger
from fashion_tagger.model.preprocess import load_for_model, preprocess, resize, to_uint8
from fashion_tagger.model.rundir import RunDir


@pytest.fixture(scope="module")
def tiny() -> tuple[Path, Path]:
    return shared_tiny_run()


def test_tiny_run_beats_chance(tiny) -> None:
    run_dir, dataset_dir = tiny
    test = Dataset.open(dataset_dir).split("test")
    tagger = Tagger.load(run_dir, backend="torch")
    assert tagger.backend_name == "torch"
    preds = tagger.predict([test.image_path(i) for i in range(len(test))], batch_size=16)
    acc = np.mean([p.labels == list(t) for p, t in zip(preds, test.labels, strict=True)])
    assert acc > 0.5  # 5 leaves: chance is 0.2


def test_predict_accepts_paths_bytes_and_pil_and_reports_bad_images(tiny) -> None:
    run_dir, dataset_dir = tiny
    ds = Dataset.open(dataset_dir)
    path = ds.image_path(0)
    tagger = Tagger.load(run_dir)
    preds = tagger.predict(
        [path, path.read_bytes(), Image.open(path), b"not an image", "/no/such.jpg"], top_k=3
    )
    assert len(preds) == 5
    assert preds[0].image == str(path) and preds[1].image is None
    assert preds[0].labels == preds[1].labels == preds[2].labels
    assert preds[0].path[0]["score"] == pytest.approx(preds[1].path[0]["score"], abs=1e-6)
    assert preds[3].error and "not_an_image" in preds[3].error and not preds[3].path
    assert preds[4].error and preds[4].image == "/no/such.jpg"
    d = preds[0].to_dict()
    assert set(d) == {"image", "path", "top_k", "attributes", "error"}
    assert len(d["top_k"]) == 3 and d["top_k"][0]["path"] == preds[0].labels
    scores = [t["score"] for t in d["top_k"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_decode_is_taxonomy_best_path_and_thresholds_apply() -> None:
    spec = make_spec(attrs=3)
    tax = spec.taxonomy
    rng = np.random.default_rng(0)
    levels = [rng.dirichlet(np.ones(n), size=6).astype(np.float32) for n in tax.sizes]
    attrs = np.array([[0.9, 0.5, 0.76]] * 6, dtype=np.float32)
    tagger = Tagger(spec, backend=lambda x: [*levels, attrs])
    probs = tagger.predict_arrays(np.zeros((6, 3, 32, 24), np.float32))
    preds = tagger.decode(probs, top_k=2, names=[f"i{i}" for i in range(6)])
    for i, p in enumerate(preds):
        idx, score = best_path(tax, [np.log(lv[i]) for lv in levels])
        assert p.labels == list(tax.decode(idx))
        assert tax.contains(p.labels)
        assert p.top_k[0]["score"] == pytest.approx(np.exp(score), rel=1e-4)
        assert [a["name"] for a in p.attributes] == ["season=s0", "season=s2"]
        assert p.image == f"i{i}"
    strict = Tagger(
        type(spec)(**{**spec.__dict__, "thresholds": [0.95, 0.4, 0.8]}), backend=tagger.backend
    )
    assert [a["name"] for a in strict.decode(probs)[0].attributes] == ["season=s1"]


def test_thresholds_come_from_model_json(tiny, tmp_path: Path) -> None:
    run_dir, dataset_dir = tiny
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    run = RunDir.open(copy)
    n = len(run.spec.attribute_names)
    run.update_model_json(attributes={**run.config["attributes"], "thresholds": [0.0] * n})
    img = Dataset.open(dataset_dir).image_path(0)
    pred = Tagger.load(copy).predict([img])[0]
    assert len(pred.attributes) == n  # threshold 0: every attribute


def test_onnx_backend_without_model_onnx_is_clear(tiny) -> None:
    with pytest.raises(
        FashionTaggerError, match=r"no model\.onnx.*`fashion-tagger export \S+ --format onnx`"
    ):
        Tagger.load(tiny[0], backend="onnx")
    with pytest.raises(FashionTaggerError, match="--backend"):
        Tagger.load(tiny[0], backend="tpu")


def test_backend_with_wrong_outputs_is_clear() -> None:
    tagger = Tagger(make_spec(), backend=lambda x: [np.ones((1, 2))])
    with pytest.raises(FashionTaggerError, match="outputs"):
        tagger.predict_arrays(np.zeros((1, 3, 32, 24), np.float32))


def test_preprocess_is_one_function_for_every_source(tmp_path: Path) -> None:
    spec = make_spec()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8))
    path = tmp_path / "a.png"
    img.save(path)
    x = load_for_model(path, spec)
    assert x.shape == (3, 32, 24) and x.dtype == np.float32
    assert np.array_equal(x, load_for_model(path.read_bytes(), spec))
    assert np.array_equal(x, preprocess(decode(path), spec))
    assert np.array_equal(x, load_for_model(img, spec))
    manual = (np.asarray(img.resize((24, 32), Image.BILINEAR), np.float32) / 255 - 0.5) / 0.25
    assert np.allclose(x, manual.transpose(2, 0, 1), atol=1e-5)


def test_pad_and_grey() -> None:
    wide = Image.new("RGB", (100, 20), (0, 0, 0))
    padded = resize(wide, (32, 32), "pad")
    arr = np.asarray(padded)
    assert (
        padded.size == (32, 32)
        and arr[0, 0].tolist() == [255, 255, 255]
        and arr[16, 16].tolist() == [0, 0, 0]
    )
    spec = make_spec()
    grey = type(spec)(**{**spec.__dict__, "channels": 1, "mean": (0.5,), "std": (0.5,)})
    assert to_uint8(Image.new("RGB", (10, 10), "red"), grey).shape == (1, 32, 24)


def test_probs_length() -> None:
    assert len(Probs([np.zeros((4, 2))], np.zeros((4, 0)))) == 4


def test_best_paths_match_decode() -> None:
    spec = make_spec()
    rng = np.random.default_rng(1)
    levels = [rng.dirichlet(np.ones(n), size=4).astype(np.float32) for n in spec.taxonomy.sizes]
    tagger = Tagger(spec, backend=lambda x: [*levels, np.zeros((4, 2), np.float32)])
    probs = tagger.predict_arrays(np.zeros((4, 3, 32, 24), np.float32))
    for row, pred in zip(tagger.best_paths(probs), tagger.decode(probs), strict=True):
        assert list(spec.taxonomy.decode(row)) == pred.labels


def test_resize_uses_the_specs_filter():
    # a hard edge: bicubic overshoots where bilinear cannot, so the two filters give other pixels
    img = Image.new("RGB", (8, 8), (0, 0, 0))
    img.paste((255, 255, 255), (4, 0, 8, 8))
    bilinear = np.asarray(resize(img, (24, 24), "squash", "bilinear"), dtype=np.int16)
    bicubic = np.asarray(resize(img, (24, 24), "squash", "bicubic"), dtype=np.int16)
    assert np.abs(bilinear - bicubic).max() > 5
    assert np.array_equal(bilinear, np.asarray(resize(img, (24, 24)), dtype=np.int16))
