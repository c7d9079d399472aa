"""`evaluate` and `calibrate`: a run dir's model on one split of a dataset dir.

Both run the model through the same preprocessing and backend as `predict` (`Tagger`), keep the
full probabilities (not only the decoded answer), and hand them to the pure functions of
`scoring` and `metrics`. `evaluate` writes metrics.json and report.html into the run dir;
`calibrate` writes per-attribute thresholds into model.json, which predict and serve then use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from fashion_tagger import _progress
from fashion_tagger._io import write_json_atomic
from fashion_tagger.dataset import fields
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.evaluation import metrics, report, scoring, slices
from fashion_tagger.evaluation.curves import draw_curves
from fashion_tagger.model import calibration as temp
from fashion_tagger.model.decode import LeafTable
from fashion_tagger.taxonomy import Taxonomy

if TYPE_CHECKING:
    from fashion_tagger.inference.tagger import Tagger
    from fashion_tagger.model.rundir import RunDir


class EvaluationError(FashionTaggerError):
    """The split cannot be evaluated (empty, no known labels, nothing readable)."""


@dataclass(frozen=True)
class SplitOutputs:
    """A model's probabilities on the readable, known-label rows of a split, and their truth."""

    levels: list[np.ndarray]
    attributes: np.ndarray
    truth: scoring.Truth
    n_rows: int
    n_unknown_labels: int
    unreadable: list[dict[str, str]]
    rows: np.ndarray | None = None
    """(N,) index of each evaluated row in the split's dataset (for slicing by its values)."""


def _open_split(dataset_dir: str | Path, split: str) -> Dataset:
    ds = Dataset.open(dataset_dir)
    part = ds.split(split)
    if not len(part):
        have = ", ".join(f"{k} ({v})" for k, v in ds.split_counts().items()) or "none"
        raise EvaluationError(
            f"{dataset_dir} has no rows in split {split!r} (splits: {have}); pick another with "
            f"--split or make splits with `fashion-tagger dataset split {dataset_dir}`"
        )
    return part


def run_split(
    tagger: Tagger, ds: Dataset, *, batch_size: int = 64, progress: bool = True
) -> SplitOutputs:
    """Probabilities of the model on every row of `ds` whose label path the model knows.

    Rows with an unknown path (the dataset has classes the model was not trained on) and
    unreadable images are left out and counted. The images go through the Tagger's batched
    iterator, as `predict` does (the next batch decodes while the model runs on this one).
    """
    spec = tagger.spec
    truth, keep = scoring.encode_truth(
        spec.taxonomy,
        spec.attribute_names,
        ds.labels,
        ds.table.column("attributes").to_pylist(),
        ds.table.column("image").to_pylist(),
    )
    if not keep.any():
        raise EvaluationError(
            f"none of the {len(ds)} rows has a label path the model knows; is this the dataset "
            "the model was trained on?"
        )
    kept = ds.with_table(ds.table.filter(pa.array(keep)))
    n = len(kept)
    levels: list[list[np.ndarray]] = [[] for _ in range(spec.taxonomy.depth)]
    attrs: list[np.ndarray] = []
    ok = np.zeros(n, dtype=bool)
    unreadable: list[dict[str, str]] = []
    paths = [kept.image_path(i) for i in range(n)]
    with _progress.bar("evaluating", total=n, enabled=progress) as bar:
        for batch in tagger.iter_probs(paths, batch_size=max(1, int(batch_size))):
            for j, error in sorted(batch.errors.items()):
                unreadable.append({"image": truth.images[batch.start + j], "error": error})
            if batch.probs is not None:
                for lvl, p in enumerate(batch.probs.levels):
                    levels[lvl].append(np.asarray(p, dtype=np.float64))
                attrs.append(np.asarray(batch.probs.attributes, dtype=np.float64))
                ok[[batch.start + j for j in batch.ok]] = True
            bar.advance(batch.size)
    if not ok.any():
        raise EvaluationError(
            f"none of the {n} images could be read (first: {unreadable[0]['error']}); check the "
            f"dataset with `fashion-tagger dataset info {ds.root}`"
        )
    sub = scoring.Truth(
        truth.paths[ok],
        truth.attributes[ok],
        [im for im, good in zip(truth.images, ok, strict=True) if good],
    )
    return SplitOutputs(
        levels=[np.concatenate(parts) for parts in levels],
        attributes=np.concatenate(attrs).reshape(int(ok.sum()), len(spec.attribute_names)),
        truth=sub,
        n_rows=len(ds),
        n_unknown_labels=int((~keep).sum()),
        unreadable=unreadable,
        rows=np.flatnonzero(keep)[ok],
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def _tagger(run_dir: str | Path, backend: str) -> tuple[RunDir, Tagger]:
    from fashion_tagger.inference.tagger import Tagger
    from fashion_tagger.model.rundir import RunDir

    run = RunDir.open(run_dir)
    return run, Tagger.load(run, backend=backend)


def calibration_block(
    taxonomy: Taxonomy, temperatures: Sequence[float], out: SplitOutputs
) -> dict[str, Any]:
    """How far the path confidence is from a probability on this split: its ECE at T = 1
    (`before`) and with the model's temperatures (`after`, what predict and label report), and
    the reliability table behind `after` (per confidence bin: rows, mean confidence, accuracy).

    `out.levels` come from the Tagger, temperatures applied; T = 1 is recovered by applying
    1/T (softmax(T log p_T) = p, up to decoding's log floor).
    """
    leaves = LeafTable.from_taxonomy(taxonomy)
    truth = out.truth.paths
    raw = temp.apply_temperatures(out.levels, [1.0 / t for t in temperatures])
    paths, conf = temp.path_confidence(leaves, out.levels)
    right = (paths == truth).all(axis=1)
    which = temp.confidence_bin(conf)
    bins = [
        {
            "from": b / temp.ECE_BINS,
            "to": (b + 1) / temp.ECE_BINS,
            "n": int((which == b).sum()),
            "confidence": float(conf[which == b].mean()),
            "accuracy": float(right[which == b].mean()),
        }
        for b in range(temp.ECE_BINS)
        if (which == b).any()
    ]
    return {
        "temperature": dict(zip(taxonomy.level_names, map(float, temperatures), strict=True)),
        "ece_path": {
            "bins": temp.ECE_BINS,
            "before": temp.path_ece(leaves, raw, truth),
            "after": temp.expected_calibration_error(conf, right),
        },
        "mean_confidence": float(conf.mean()) if len(conf) else 0.0,
        "path_accuracy": float(right.mean()) if len(right) else 0.0,
        "reliability": bins,
    }


def slice_specs(ds: Dataset, names: Sequence[str]) -> list[slices.SliceSpec]:
    """The values of each `--slice-by` name on every row of `ds` (an unknown name is an error
    listing the known ones, raised before any model loads)."""
    if len(set(names)) != len(names):
        raise EvaluationError(f"--slice-by {', '.join(names)} names a slice twice")
    out = []
    for name in names:
        f = fields.field(ds, name, "--slice-by")
        out.append(slices.SliceSpec(name, f.kind, f.values))
    return out


def slices_block(
    specs: Sequence[slices.SliceSpec], taxonomy: Taxonomy, out: SplitOutputs
) -> dict[str, Any]:
    """`slices` of metrics.json for the evaluated rows of `out` (the consistent decoded path)."""
    rows = out.rows if out.rows is not None else np.arange(out.truth.paths.shape[0])
    pred = LeafTable.from_taxonomy(taxonomy).best_paths(out.levels)
    kept = [slices.SliceSpec(s.name, s.kind, [s.values[i] for i in rows]) for s in specs]
    return slices.slice_metrics(
        kept, out.truth.paths, pred, list(taxonomy.level_names), list(taxonomy.sizes)
    )


def evaluate(
    run_dir: str | Path,
    dataset_dir: str | Path,
    split: str = "test",
    *,
    slice_by: Sequence[str] = (),
    batch_size: int = 64,
    json_path: str | Path | None = None,
    report_path: str | Path | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> dict[str, Any]:
    """Evaluate a trained model on one split and write metrics.json and report.html.

    Args:
        run_dir: the run dir (model.json + weights).
        dataset_dir: a dataset dir whose label paths are the model's (unknown paths are skipped).
        split: `train`, `val` or `test`.
        slice_by: names (levels, attribute groups, meta keys such as `colour`) to measure each
            value of separately: `slices` in metrics.json, and a report section.
        batch_size: images per forward pass.
        json_path: where to write the metrics (default run_dir/metrics.json).
        report_path: where to write the HTML report (default run_dir/report.html).
        progress: show a progress bar.
        backend: `auto`, `torch` or `onnx`, as for predict.

    Returns:
        The metrics dict that was written (schema in docs/evaluation.md).
    """
    ds = _open_split(dataset_dir, split)  # cheap checks first: a typo fails before torch loads
    specs = slice_specs(ds, list(slice_by))
    run, tagger = _tagger(run_dir, backend)
    out = run_split(tagger, ds, batch_size=batch_size, progress=progress)
    spec = tagger.spec
    result: dict[str, Any] = {
        "format_version": scoring.FORMAT_VERSION,
        "created": _now(),
        "run": {"path": str(run.path), "model_id": spec.model_id, "backend": tagger.backend_name},
        "dataset": {
            "path": str(dataset_dir),
            "name": ds.name,
            "split": split,
            "n_rows": out.n_rows,
            "n_images": int(out.truth.paths.shape[0]),
            "n_unknown_labels": out.n_unknown_labels,
            "n_unreadable": len(out.unreadable),
            "unreadable": out.unreadable[:20],
        },
        **scoring.score(
            spec.taxonomy,
            out.levels,
            out.attributes,
            out.truth,
            spec.attribute_names,
            spec.thresholds,
        ),
        "calibration": calibration_block(spec.taxonomy, spec.temperatures, out),
    }
    if specs:
        result["slices"] = slices_block(specs, spec.taxonomy, out)
    if report_path is None and not run.curves.is_file():
        draw_curves(run)  # trained through the Python API: the run dir gets its curves now
    json_path = Path(json_path) if json_path else run.metrics_json
    report_path = Path(report_path) if report_path else run.report_html
    write_json_atomic(json_path, result)
    report.write_report(result, report_path, dataset_root=ds.root, run_dir=run.path)
    result["files"] = {"metrics": str(json_path), "report": str(report_path)}
    return result


def _fit_thresholds(
    names: Sequence[str], out: SplitOutputs, before: np.ndarray, target_precision: float | None
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Per attribute: its threshold chosen on `out` (see `calibrate`), and the new thresholds."""
    rows = []
    for j, name in enumerate(names):
        thr, p, r, f, note = metrics.best_threshold(
            out.truth.attributes[:, j], out.attributes[:, j], target_precision
        )
        rows.append(
            {
                "name": name,
                "threshold": thr,
                "previous": float(before[j]),
                "precision": p,
                "recall": r,
                "f1": f,
                "support": int(out.truth.attributes[:, j].sum()),
                "note": note,
            }
        )
    return rows, np.array([row["threshold"] for row in rows], dtype=np.float64)


def calibrate(
    run_dir: str | Path,
    dataset_dir: str | Path,
    split: str = "val",
    *,
    target_precision: float | None = None,
    batch_size: int = 64,
    progress: bool = True,
    backend: str = "auto",
) -> dict[str, Any]:
    """Refit the per-level temperatures and choose each attribute's threshold on a held-out
    split, and store them in model.json.

    Temperatures: per level, the T minimising the NLL of the true class (`model.calibration`),
    fitted on the model's own probabilities (T = 1) whatever model.json held; a level with
    fewer than `MIN_FIT_ROWS` rows keeps T = 1. Thresholds, per attribute: the one with the best
    F1, or with `target_precision` the lowest one whose precision reaches it (most recall at
    that precision), falling back to best F1 with a note when no threshold reaches it. An
    attribute with no positive in the split keeps the default threshold. Calibrate on `val`,
    never on the split you report (`test`).

    Returns:
        `split`, `n_images`, `target_precision`, `temperature` (the fit: `temperature`,
        `previous`, `nll`, `ece_path` before/after), `OF1` before/after (on this split; None
        without attributes) and one entry per attribute: `name`, `threshold`, `previous`,
        `precision`, `recall`, `f1`, `support`, `note`.
    """
    if target_precision is not None and not 0.0 < target_precision <= 1.0:
        raise EvaluationError(
            f"--target-precision must be in (0, 1], not {target_precision}; e.g. 0.9"
        )
    from fashion_tagger.inference.tagger import Tagger

    ds = _open_split(dataset_dir, split)
    run, tagger = _tagger(run_dir, backend)
    spec = tagger.spec
    # the model's own probabilities: a refit starts from T = 1, not from the stored fit
    raw = Tagger(replace(spec, temperatures=()), tagger.backend, tagger.backend_name)
    out = run_split(raw, ds, batch_size=batch_size, progress=progress)
    fit = temp.fit_temperatures(spec.taxonomy, out.levels, out.truth.paths)
    calibration = {
        "split": split,
        "dataset": str(dataset_dir),
        "target_precision": target_precision,
        "created": _now(),
    }
    record = fit.to_json(split=split, dataset=str(dataset_dir), created=calibration["created"])
    names: Sequence[str] = spec.attribute_names
    before = np.asarray(spec.thresholds, dtype=np.float64)
    rows, after = _fit_thresholds(names, out, before, target_precision)
    fields: dict[str, Any] = {
        "temperature": dict(zip(spec.level_names, fit.temperatures, strict=True)),
        "temperature_fit": record,
        "metrics": {
            **(run.config.get("metrics") or {}),
            f"{split}_ece_before": record["ece_path"]["before"],
            f"{split}_ece_after": record["ece_path"]["after"],
        },
    }
    if names:
        fields["attributes"] = {
            **run.config.get("attributes", {}),
            "thresholds": [float(t) for t in after],
            "calibration": calibration,
        }
    run.update_model_json(**fields)
    y, s = out.truth.attributes, out.attributes
    return {
        **calibration,
        "model_json": str(run.model_json),
        "n_images": int(y.shape[0]),
        "temperature": {
            **record,
            "previous": dict(zip(spec.level_names, spec.temperatures, strict=True)),
        },
        "OF1": {
            "before": metrics.multilabel_overall(y, s, before)["OF1"],
            "after": metrics.multilabel_overall(y, s, after)["OF1"],
        }
        if names
        else None,
        "attributes": rows,
    }
