"""evaluate and calibrate on a small trained run, checked against an independent recomputation
from `Tagger.predict` output and the dataset labels (scikit-learn for the arithmetic)."""

import json
import shutil
import sys

import numpy as np
import pytest
from run_fixtures import shared_tiny_run
from sklearn import metrics as skm
from typer.testing import CliRunner

from fashion_tagger.cli import app, main
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.evaluation import calibrate, evaluate
from fashion_tagger.evaluation.evaluate import EvaluationError
from fashion_tagger.inference.tagger import Tagger
from fashion_tagger.model.rundir import RunDir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The trained run shared by the test process (training is the slow part), with one test image
    broken after training: evaluation must count it, not crash."""
    shared_run, shared_data = shared_tiny_run()
    tmp = tmp_path_factory.mktemp("tiny")
    # a private copy: these tests write report.html, thresholds and a broken image into it
    run_dir, data_dir = tmp / "run", shutil.copytree(shared_data, tmp / "dataset")
    shutil.copytree(shared_run, run_dir, ignore=shutil.ignore_patterns("checkpoints", "cache"))
    test = Dataset.open(data_dir).split("test")
    test.image_path(0).write_bytes(b"not an image")
    return run_dir, data_dir


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory):
    """`fashion-tagger evaluate --json FILE` on the test split, as a user runs it."""
    run_dir, data_dir = tiny
    out = tmp_path_factory.mktemp("eval")
    result = CliRunner().invoke(
        app,
        [
            "evaluate", str(run_dir), str(data_dir), "--split", "test",
            "--json", str(out / "m.json"), "--batch-size", "16", "--no-progress",
            "--slice-by", "size", "--slice-by", "pattern",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "shape" in result.output and "wrote" in result.output
    return json.loads((out / "m.json").read_text(), parse_constant=_no_nan)


def _no_nan(name: str) -> None:
    raise AssertionError(f"metrics.json holds {name}: not valid JSON for other tools")


def test_evaluate_matches_predict(tiny, evaluated):
    run_dir, data_dir = tiny
    m = evaluated
    test = Dataset.open(data_dir).split("test")
    preds = Tagger.load(run_dir, backend="torch").predict(
        [test.image_path(i) for i in range(len(test))], batch_size=7
    )
    # the broken image is reported by both, and left out of every number
    assert [i for i, p in enumerate(preds) if p.error] == [0]
    assert m["dataset"]["n_unreadable"] == 1
    assert m["dataset"]["unreadable"][0]["image"] == test.table.column("image")[0].as_py()
    assert m["dataset"]["n_rows"] == len(test) and m["dataset"]["split"] == "test"
    assert m["dataset"]["n_images"] == len(test) - 1
    true = test.labels[1:]
    preds = preds[1:]
    pred = [p.labels for p in preds]

    for lvl, block in enumerate(m["levels"]):
        rows = [i for i, t in enumerate(true) if len(t) > lvl]
        t = [" > ".join(true[i][: lvl + 1]) for i in rows]
        p = [" > ".join(pred[i][: lvl + 1]) if len(pred[i]) > lvl else "(none)" for i in rows]
        assert block["n"] == len(rows)
        assert block["accuracy"] == pytest.approx(skm.accuracy_score(t, p))
        kw = {"average": "weighted", "zero_division": 0}
        assert block["OP"] == pytest.approx(skm.precision_score(t, p, **kw))
        assert block["OR"] == pytest.approx(skm.recall_score(t, p, **kw))
        assert block["OF1"] == pytest.approx(skm.f1_score(t, p, **kw))
        # per-class support and the confusion matrix agree with the labels
        support = {c["name"]: c["support"] for c in block["per_class"]}
        for name in set(t):
            assert support[name] == t.count(name)
        assert np.asarray(block["confusion"]["matrix"]).sum() == sum(x != "(none)" for x in p)

    # the model is clearly better than chance (5 leaves): the numbers are not all zero
    assert m["levels"][-1]["accuracy"] > 0.5
    exact = np.mean([tuple(a) == tuple(b) for a, b in zip(true, pred, strict=True)])
    assert m["hierarchy"]["exact_path_accuracy"] == pytest.approx(exact)
    assert m["hierarchy"]["valid_path_rate"]["consistent"] == 1.0
    errors = m["hierarchy"]["errors"]
    assert errors["correct"] == round(exact * len(true))
    right_parent = sum(
        a != b and len(a) >= 2 and list(a[:-1]) == list(b[: len(a) - 1])
        for a, b in zip(true, pred, strict=True)
    )
    assert errors["right_parent_wrong_leaf"] == right_parent
    # hierarchical precision by hand: shared prefix over predicted path lengths
    common = sum(
        next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        for a, b in zip(true, pred, strict=True)
    )
    assert m["hierarchy"]["consistent"]["hP"] == pytest.approx(common / sum(map(len, pred)))

    # attributes at the model's thresholds: exactly what predict reports
    names = m["attributes"]["names"]
    attrs = test.table.column("attributes").to_pylist()[1:]
    y = np.array([[n in set(a) for n in names] for a in attrs])
    yhat = np.array([[n in {x["name"] for x in p.attributes} for n in names] for p in preds])
    kw = {"average": "micro", "zero_division": 0}
    got = m["attributes"]["at_thresholds"]
    assert got["OP"] == pytest.approx(skm.precision_score(y, yhat, **kw))
    assert got["OR"] == pytest.approx(skm.recall_score(y, yhat, **kw))
    assert got["OF1"] == pytest.approx(skm.f1_score(y, yhat, **kw))
    assert m["attributes"]["at_k"]["n_images_without_labels"] == int((~y.any(1)).sum())
    assert 0 < m["attributes"]["mAP"] <= 1

    # the top losses are real rows of the split, worst first
    losses = [t["loss"] for t in m["top_losses"]]
    assert losses == sorted(losses, reverse=True)
    assert {t["image"] for t in m["top_losses"]} <= set(test.table.column("image").to_pylist()[1:])


def test_slices_match_predict_per_value(tiny, evaluated):
    """`--slice-by size` and `pattern`: each value's accuracy and macro F1 per level, recomputed
    with scikit-learn from predict's answers on the rows carrying that value."""
    run_dir, data_dir = tiny
    test = Dataset.open(data_dir).split("test")
    preds = Tagger.load(run_dir, backend="torch").predict(
        [test.image_path(i) for i in range(1, len(test))], batch_size=7
    )
    true, pred = test.labels[1:], [p.labels for p in preds]
    attrs = test.table.column("attributes").to_pylist()[1:]
    sl = evaluated["slices"]
    assert list(sl) == ["size", "pattern"] and sl["size"]["kind"] == "attribute"
    assert set(sl["size"]["values"]) == {"big", "small"} and sl["size"]["n_without_value"] == 0
    assert sl["pattern"]["n_without_value"] == sum("pattern=striped" not in a for a in attrs)
    for name, value in (("size", "big"), ("size", "small"), ("pattern", "striped")):
        rows = [i for i, a in enumerate(attrs) if f"{name}={value}" in a]
        block = sl[name]["values"][value]
        assert block["n"] == len(rows)
        for lvl, level in enumerate(["shape", "colour"]):
            t = [" > ".join(true[i][: lvl + 1]) for i in rows]
            p = [" > ".join(pred[i][: lvl + 1]) for i in rows]
            got = block["levels"][level]
            assert got["n"] == len(rows)
            assert got["accuracy"] == pytest.approx(skm.accuracy_score(t, p))
            assert got["macro_f1"] == pytest.approx(skm.f1_score(t, p, average="macro"))
            low, high = got["accuracy_ci95"]
            assert low <= got["accuracy"] <= high
    # the two sizes partition the split: their correct rows add up to the level's accuracy
    for level in evaluated["levels"]:
        right = sum(v["levels"][level["name"]]["correct"] for v in sl["size"]["values"].values())
        assert right == round(level["accuracy"] * level["n"])
    gaps = sl["size"]["gaps"]
    assert gaps and all(g["gap_ci95"][0] <= g["gap"] <= g["gap_ci95"][1] for g in gaps)
    html = (run_dir / "report.html").read_text()
    assert '<section id="slices">' in html and "by size (attribute, 2 values)" in html


def test_unknown_slice_is_a_one_line_error_before_the_model_loads(tiny, monkeypatch):
    run_dir, data_dir = tiny
    ev = sys.modules["fashion_tagger.evaluation.evaluate"]  # the module, not the function
    monkeypatch.setattr(ev, "_tagger", lambda *a: pytest.fail("the model loaded"))
    with pytest.raises(
        FashionTaggerError, match=r"--slice-by 'brand'.*known names: shape, colour, pattern, size"
    ):
        evaluate(run_dir, data_dir, "test", slice_by=["brand"], progress=False)
    with pytest.raises(EvaluationError, match="twice"):
        evaluate(run_dir, data_dir, "test", slice_by=["size", "size"], progress=False)


def test_evaluate_writes_defaults_and_the_report(tiny, evaluated):
    run_dir, _ = tiny
    # the CLI run wrote its JSON elsewhere but the report to the run dir by default
    html = (run_dir / "report.html").read_text()
    for sid in ("summary", "confusion", "top-losses", "per-class", "curves", "attributes"):
        assert f'<section id="{sid}">' in html
    assert "This run has no training curves" not in html  # the tiny run has curves
    assert f"{100 * evaluated['levels'][0]['accuracy']:.1f}" in html


def test_calibrate_stores_max_f1_thresholds(tiny, tmp_path):
    run_dir, data_dir = tiny
    r = calibrate(run_dir, data_dir, "val", progress=False)
    run = RunDir.open(run_dir)  # still valid: weights untouched, model.json readable
    assert run.spec.thresholds == [a["threshold"] for a in r["attributes"]]
    assert run.config["attributes"]["calibration"]["split"] == "val"
    assert Tagger.load(run_dir, backend="torch").spec.thresholds == run.spec.thresholds
    assert r["OF1"]["after"] >= r["OF1"]["before"] - 1e-12

    # brute force: no candidate threshold beats the stored one's F1 on val
    from fashion_tagger.model.preprocess import load_for_model

    val = Dataset.open(data_dir).split("val")
    tagger = Tagger.load(run_dir, backend="torch")
    x = np.stack([load_for_model(val.image_path(i), tagger.spec) for i in range(len(val))])
    scores = tagger.predict_arrays(x).attributes
    attrs = val.table.column("attributes").to_pylist()
    for j, a in enumerate(r["attributes"]):
        y = np.array([a["name"] in set(row) for row in attrs])
        best = max(skm.f1_score(y, scores[:, j] >= t, zero_division=0) for t in scores[:, j])
        assert a["f1"] == pytest.approx(best, abs=1e-6)
        assert a["f1"] == pytest.approx(
            skm.f1_score(y, scores[:, j] >= a["threshold"], zero_division=0), abs=1e-6
        )

    # a target precision, from the CLI: every threshold reaches it, or says why not
    result = CliRunner().invoke(
        app,
        ["calibrate", str(run_dir), str(data_dir), "--target-precision", "0.95", "--json"],
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["target_precision"] == 0.95
    assert RunDir.open(run_dir).spec.thresholds == [a["threshold"] for a in r["attributes"]]
    for a in r["attributes"]:
        assert a["precision"] >= 0.95 or "unreachable" in a["note"]


def _ece(conf, right, bins=15):
    """ECE by its definition, bin by bin (independent of `model.calibration`)."""
    conf, right = np.asarray(conf), np.asarray(right, dtype=float)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf >= lo) & ((conf < hi) if b < bins - 1 else (conf <= hi))
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return total


def test_evaluate_reports_the_calibration_of_the_path_confidence(tiny, evaluated):
    """ECE of the confidence predict reports (top_k[0].score) against whole-path correctness;
    the tiny run's val split is too small to fit temperatures, so before equals after."""
    run_dir, data_dir = tiny
    c = evaluated["calibration"]
    assert c["temperature"] == {"shape": 1.0, "colour": 1.0}
    test = Dataset.open(data_dir).split("test")
    preds = Tagger.load(run_dir, backend="torch").predict(
        [test.image_path(i) for i in range(1, len(test))]
    )
    conf = [p.top_k[0]["score"] for p in preds]
    right = [p.labels == list(t) for p, t in zip(preds, test.labels[1:], strict=True)]
    assert c["ece_path"]["bins"] == 15
    assert c["ece_path"]["after"] == pytest.approx(_ece(conf, right), abs=1e-6)
    assert c["ece_path"]["before"] == pytest.approx(c["ece_path"]["after"], abs=1e-6)
    assert c["mean_confidence"] == pytest.approx(np.mean(conf), abs=1e-6)
    assert c["path_accuracy"] == pytest.approx(np.mean(right))
    assert sum(b["n"] for b in c["reliability"]) == evaluated["dataset"]["n_images"]
    assert '<section id="calibration">' in (run_dir / "report.html").read_text()


def test_calibrate_refits_temperatures_from_t_one(tiny, tmp_path):
    """calibrate fits each level's T at the NLL minimum of the model's own probabilities (not
    on top of the stored T: a second calibrate gives the same T), stores it in model.json, and
    evaluate then reports the ECE with and without it."""
    import pyarrow as pa

    run_src, data_src = tiny
    run_dir = shutil.copytree(run_src, tmp_path / "run")
    # val and test together: unseen rows, and over the 50 a level needs for a fit
    data_dir = shutil.copytree(data_src, tmp_path / "data")
    ds = Dataset.open(data_dir)
    splits = ["train" if s == "train" else "val" for s in ds.table.column("split").to_pylist()]
    ds.with_table(ds.table.set_column(ds.table.schema.get_field_index("split"), "split",
                                      pa.array(splits))).save()  # fmt: skip
    r = calibrate(run_dir, data_dir, "val", progress=False)
    fit = r["temperature"]
    temps = fit["temperature"]
    assert fit["previous"] == {"shape": 1.0, "colour": 1.0} and fit["note"] == ""
    assert all(t != pytest.approx(1.0, abs=0.02) for t in temps.values())
    run = RunDir.open(run_dir)
    assert run.spec.temperatures == pytest.approx(tuple(temps.values()), rel=1e-5)
    assert run.config["temperature_fit"]["split"] == "val"
    assert run.config["metrics"]["val_ece_after"] == fit["ece_path"]["after"]
    for level in temps:
        assert fit["nll"]["after"][level] <= fit["nll"]["before"][level] + 1e-9

    # brute force: the stored T is the NLL minimum of the model's probabilities on that split
    from fashion_tagger.model.preprocess import load_for_model

    val = Dataset.open(data_dir).split("val")
    readable = [i for i in range(len(val)) if val.image_path(i).read_bytes()[:4] != b"not "]
    raw = Tagger.load(run_src, backend="torch")  # T = 1
    x = np.stack([load_for_model(val.image_path(i), raw.spec) for i in readable])
    levels = raw.predict_arrays(x).levels
    truth = [raw.spec.taxonomy.encode(val.labels[i]) for i in readable]
    for lvl, (name, t) in enumerate(temps.items()):
        y = np.array([p[lvl] for p in truth])
        logp = np.log(np.maximum(levels[lvl].astype(np.float64), 1e-12))

        def nll(temp, logp=logp, y=y):
            z = logp / temp
            z = z - z.max(1, keepdims=True)
            return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))

        assert nll(t) <= min(nll(t * 1.05), nll(t / 1.05))
        assert nll(t) == pytest.approx(fit["nll"]["after"][name], abs=1e-5)

    again = calibrate(run_dir, data_dir, "val", progress=False)["temperature"]
    assert again["temperature"] == pytest.approx(temps, rel=1e-4)
    assert again["previous"] == pytest.approx(temps, rel=1e-5)

    m = evaluate(run_dir, data_dir, "val", progress=False)["calibration"]
    assert m["temperature"] == pytest.approx(temps, rel=1e-5)
    assert m["ece_path"]["after"] == pytest.approx(fit["ece_path"]["after"], abs=1e-5)
    assert m["ece_path"]["before"] == pytest.approx(fit["ece_path"]["before"], abs=1e-4)

    # a split too small to fit keeps T = 1 and says so, in model.json too
    small = calibrate(run_dir, data_src, "val", progress=False)["temperature"]
    assert small["temperature"] == {"shape": 1.0, "colour": 1.0}
    assert "(< 50), T kept at 1.0" in small["note"]
    assert RunDir.open(run_dir).spec.temperatures == (1.0, 1.0)


def test_user_errors_are_one_line(tiny, monkeypatch, capsys):
    run_dir, data_dir = tiny
    with pytest.raises(EvaluationError, match="--split"):
        evaluate(run_dir, data_dir, "nope", progress=False)
    with pytest.raises(EvaluationError, match="target-precision"):
        calibrate(run_dir, data_dir, target_precision=1.5)
    # through the real entry point: one red line, exit 2, no traceback
    monkeypatch.setattr(
        sys, "argv", ["fashion-tagger", "evaluate", str(run_dir), str(data_dir / "x")]
    )
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
