"""`fashion-tagger evaluate` and `calibrate`: measure a run dir's model on a dataset split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fashion_tagger.cli._app import PROGRESS, app, console, print_json

RUN = typer.Argument(..., help="A run dir (written by train).")
DATA = typer.Argument(
    ..., help="A dataset dir (local or a URL) with the labels the model was trained on."
)
BATCH = typer.Option(64, "--batch-size", min=1, help="Images per forward pass.")
BACKEND = typer.Option(
    "auto", "--backend", help="auto (ONNX if exported, else torch), torch or onnx."
)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _summary(m: dict[str, Any]) -> Table:
    table = Table(
        "level", "images", "acc %", "top-5 %", "OP %", "OR %", "OF1 %", "macro F1 %",
        title=f"{m['dataset']['name']} / {m['dataset']['split']}: {m['dataset']['n_images']:,} images",
    )  # fmt: skip
    for b in m["levels"]:
        table.add_row(
            b["name"], f"{b['n']:,}", _pct(b["accuracy"]), _pct(b["top5_accuracy"]),
            _pct(b["OP"]), _pct(b["OR"]), _pct(b["OF1"]), _pct(b["macro_f1"]),
        )  # fmt: skip
    return table


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = RUN,
    dataset_dir: str = DATA,
    split: str = typer.Option("test", "--split", help="Which split to evaluate on."),
    slice_by: list[str] = typer.Option(
        None,
        "--slice-by",
        help="Also score each value of NAME (a level, attribute group or meta key, e.g. colour) "
        "separately, with the largest gaps and their 95 % intervals (repeatable).",
    ),
    json_path: Path = typer.Option(
        None, "--json", help="Write the metrics here (default RUN_DIR/metrics.json)."
    ),
    report_path: Path = typer.Option(
        None, "--report", help="Write the HTML report here (default RUN_DIR/report.html)."
    ),
    batch_size: int = BATCH,
    backend: str = BACKEND,
    progress: bool = PROGRESS,
) -> None:
    """Accuracy, top-5, OP/OR/OF1 and per-class scores per level, attribute OP/OR/OF1, P@k and
    mAP, hierarchical F1; writes metrics.json and a self-contained report.html. With
    --slice-by, the same per value of a name (metrics.json `slices`), e.g. is the model worse
    on pink shoes?

    Example: fashion-tagger evaluate runs/products data/products --split test

    Example: fashion-tagger evaluate runs/footwear data/footwear --slice-by colour
    """
    from fashion_tagger.evaluation import evaluate

    m = evaluate(
        run_dir,
        dataset_dir,
        split,
        slice_by=slice_by or (),
        batch_size=batch_size,
        json_path=json_path,
        report_path=report_path,
        progress=progress,
        backend=backend,
    )
    console.print(_summary(m))
    h, a = m["hierarchy"], m["attributes"]
    console.print(
        f"exact path {_pct(h['exact_path_accuracy'])} %, hierarchical F1 {h['consistent']['hF1']:.3f}, "
        f"valid paths: consistent {_pct(h['valid_path_rate']['consistent'])} %, "
        f"raw argmax {_pct(h['valid_path_rate']['raw_argmax'])} %"
    )
    if a["names"]:
        t = a["at_thresholds"]
        console.print(
            f"attributes: mAP {a['mAP']:.3f}, F1@k {a['at_k']['F1@k']:.3f}, "
            f"OF1 {a['at_0.75']['OF1']:.3f} at 0.75, {t['OF1']:.3f} at model thresholds"
        )
    c = m["calibration"]
    console.print(
        f"path confidence: mean {c['mean_confidence']:.3f} for {_pct(c['path_accuracy'])} % "
        f"right; ECE {c['ece_path']['after']:.3f} "
        f"({c['ece_path']['before']:.3f} without the model's temperatures)"
    )
    if m["dataset"]["n_unknown_labels"] or m["dataset"]["n_unreadable"]:
        console.print(
            f"[yellow]left out[/]: {m['dataset']['n_unknown_labels']} rows with unknown labels, "
            f"{m['dataset']['n_unreadable']} unreadable images"
        )
    for name, block in (m.get("slices") or {}).items():
        console.print(_slice_table(name, block))
    console.print(f"wrote {m['files']['metrics']} and {m['files']['report']}")


def _slice_table(name: str, block: dict[str, Any]) -> Table:
    """The gaps of one --slice-by name: the values whose accuracy differs most from the rest."""
    table = Table(
        "value", "level", "images", "acc %", "rest acc %", "gap (95 % CI)", "meaningful",
        title=f"by {name}: {len(block['values'])} values, largest gaps",
    )  # fmt: skip
    for g in block["gaps"]:
        low, high = g["gap_ci95"]
        table.add_row(
            g["value"], g["level"], f"{g['n']:,}", _pct(g["accuracy"]), _pct(g["rest_accuracy"]),
            f"{100 * g['gap']:+.1f} ({100 * low:+.1f}, {100 * high:+.1f})",
            "yes" if g["meaningful"] else "no",
        )  # fmt: skip
    return table


@app.command("calibrate")
def calibrate_cmd(
    run_dir: Path = RUN,
    dataset_dir: str = DATA,
    split: str = typer.Option(
        "val", "--split", help="Held-out split to fit temperatures and thresholds on."
    ),
    target_precision: float = typer.Option(
        None,
        "--target-precision",
        help="Lowest threshold reaching this precision (0-1) instead of the best F1.",
    ),
    batch_size: int = BATCH,
    backend: str = BACKEND,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    progress: bool = PROGRESS,
) -> None:
    """Refit the per-level temperatures (so a path confidence means a probability) and the
    per-attribute thresholds that maximise F1 (or reach a target precision) on a held-out
    split; both are stored in model.json for predict, serve, evaluate and label.

    Example: fashion-tagger calibrate runs/products data/products --split val --target-precision 0.9
    """
    from fashion_tagger.evaluation import calibrate

    r = calibrate(
        run_dir,
        dataset_dir,
        split,
        target_precision=target_precision,
        batch_size=batch_size,
        progress=progress,
        backend=backend,
    )
    if as_json:
        print_json(r)
        return
    _print_temperatures(r)
    if r["attributes"]:
        _print_thresholds(r)
    console.print(f"wrote {r['model_json']}")


def _print_temperatures(r: dict[str, Any]) -> None:
    t = r["temperature"]
    table = Table(
        "level", "T", "was", "rows", "NLL before", "NLL after",
        title=f"temperatures from {r['split']} ({r['n_images']:,} images)",
    )  # fmt: skip
    for level, value in t["temperature"].items():
        nll_b, nll_a = t["nll"]["before"][level], t["nll"]["after"][level]
        table.add_row(
            level, f"{value:.3f}", f"{t['previous'][level]:.3f}", f"{t['rows'][level]:,}",
            "-" if nll_b is None else f"{nll_b:.3f}", "-" if nll_a is None else f"{nll_a:.3f}",
        )  # fmt: skip
    console.print(table)
    ece = t["ece_path"]
    if ece["before"] is not None:
        console.print(
            f"path confidence ECE ({ece['bins']} bins) on {r['split']}: "
            f"{ece['before']:.3f} at T = 1 -> {ece['after']:.3f}"
        )
    if t["note"]:
        console.print(f"[yellow]note[/]: {t['note']}")


def _print_thresholds(r: dict[str, Any]) -> None:
    table = Table(
        "attribute", "threshold", "was", "prec.", "recall", "F1", "support", "note",
        title=f"thresholds from {r['split']} ({r['n_images']:,} images)",
    )  # fmt: skip
    for a in r["attributes"]:
        table.add_row(
            a["name"], f"{a['threshold']:.3f}", f"{a['previous']:.3f}", f"{a['precision']:.3f}",
            f"{a['recall']:.3f}", f"{a['f1']:.3f}", f"{a['support']:,}", a["note"],
        )  # fmt: skip
    console.print(table)
    console.print(
        f"overall F1 on {r['split']}: {r['OF1']['before']:.3f} -> {r['OF1']['after']:.3f}"
    )
    if r["OF1"]["after"] < r["OF1"]["before"]:
        console.print(
            "[yellow]note[/]: each attribute's own F1 went up but the overall (micro) F1 went "
            "down: rare attributes now get low thresholds. Use --target-precision to trade "
            "recall for fewer false alarms."
        )
