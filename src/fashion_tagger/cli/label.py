"""`fashion-tagger label` (auto-label photos into a dataset dir) and `fashion-tagger review`
(the page to accept or reject suggested labels)."""

from __future__ import annotations

from pathlib import Path

import typer

from fashion_tagger.cli._app import PROGRESS, app, console, print_json
from fashion_tagger.curation.label import DEFAULT_MIN_CONFIDENCE  # no torch: --help stays fast


@app.command("label")
def label_cmd(
    run_dir: Path = typer.Argument(..., help="A run dir (written by train)."),
    paths: list[str] = typer.Argument(..., help="Image files, folders (walked) or globs."),
    out: Path = typer.Option(..., "--out", help="The dataset dir to create or add to."),
    min_confidence: float = typer.Option(
        DEFAULT_MIN_CONFIDENCE,
        "--min-confidence",
        min=0.0,
        max=1.0,
        help="Label a photo when its path confidence is at least this; queue it for review "
        "otherwise. The confidence is a probability once the run is calibrated (train fits "
        "its temperatures on val; `fashion-tagger calibrate` refits them). On unseen product "
        "photos the default labelled 60 % of them at 96.7 % path precision; 0.95 labelled "
        "40 % at 97.7 %, 0.8 labelled 73 % at 94 % (BENCHMARKS.md, Auto-labelling).",
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per forward pass."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch or onnx."),
    review: bool = typer.Option(
        True, "--review/--no-review", help="Write review.html for the low-confidence queue."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    progress: bool = PROGRESS,
) -> None:
    """Auto-label photos with a trained model: confident rows get the predicted path, the
    others wait in label_issues.parquet (kind low_confidence) and on the review page; a re-run
    adds only new photos.

    Example: fashion-tagger label runs/products scraped/ --out data/scraped --min-confidence 0.95
    """
    from fashion_tagger.curation.label import label
    from fashion_tagger.curation.review import write_review_page

    summary = label(
        run_dir,
        paths,
        out,
        min_confidence,
        batch_size=batch_size,
        backend=backend,
        progress=progress,
    )
    if review and summary.queued:
        summary.review_page = str(write_review_page(out))
    if as_json:
        print_json(summary.to_dict())
        return
    console.print(
        f"[green]labelled[/] {summary.labelled} of {summary.added} new photos at "
        f"confidence >= {summary.min_confidence:g}; {summary.queued} queued for review"
        f"; {summary.already} already in {summary.out}; {len(summary.skipped)} unreadable"
    )
    if summary.review_page:
        console.print(f"review them in {summary.review_page}")


@app.command("review")
def review_cmd(
    dataset_dir: Path = typer.Argument(..., help="A dataset dir with label_issues.parquet."),
    port: int = typer.Option(8001, "--port", min=1, max=65535, help="Port to listen on."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (the default: this machine only)."
    ),
    static: Path | None = typer.Option(
        None,
        "--static",
        "--out",
        help="Write the self-contained page to this HTML file instead of serving it (works "
        "offline; decisions stay in the browser until exported).",
    ),
    max_rows: int = typer.Option(
        2000, "--max-rows", min=1, help="The most rows on the page (highest scores first)."
    ),
    all_rows: bool = typer.Option(
        False, "--all", help="Every scored row, not only those flagged as issues."
    ),
) -> None:
    """Review a dataset dir's label issues in the browser: thumbnails, given versus suggested
    path, sorting and filters; keys a/r/u accept, reject, undo, e exports the decisions.

    Served (the default), every decision is stored in DATASET_DIR/review/decisions.jsonl before
    the page moves on, and `fashion-tagger dataset relabel DATASET_DIR` applies them. With
    --static the page is one HTML file to open anywhere; its exported decisions file goes to
    `dataset relabel --decisions FILE`.

    Example: fashion-tagger review data/products --port 8001
    Example: fashion-tagger review data/products --static review.html
    """
    if static is not None:
        from fashion_tagger.curation.review import write_review_page

        page = write_review_page(dataset_dir, static, only_issues=not all_rows, max_rows=max_rows)
        console.print(f"[green]wrote[/] {page}")
        return
    from fashion_tagger.errors import require

    require("fastapi", "serve")
    uvicorn = require("uvicorn", "serve")
    from fashion_tagger.curation.server import create_app

    hosts = tuple(dict.fromkeys([host, "127.0.0.1", "localhost"]))
    app_ = create_app(dataset_dir, only_issues=not all_rows, max_rows=max_rows, hosts=hosts)
    console.print(
        f"reviewing {dataset_dir} on http://{host}:{port}/ ; decisions are stored in "
        f"{dataset_dir / 'review' / 'decisions.jsonl'}; then: fashion-tagger dataset relabel "
        f"{dataset_dir}"
    )
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
