"""`fashion-tagger audit` and `dataset relabel`: find wrong labels, review them, fix them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from fashion_tagger.cli._app import PROGRESS, app, console, dataset_app, print_json

if TYPE_CHECKING:
    from fashion_tagger.curation.audit import AuditResult

DIR = typer.Argument(..., help="A dataset dir (written by import or crawl).")
JSON = typer.Option(False, "--json", help="Print one JSON object.")


@app.command("audit")
def audit_cmd(
    directory: Path = DIR,
    run: Path = typer.Option(
        None, "--run", help="Embed with this run dir's backbone (default: pretrained Lite0)."
    ),
    folds: int = typer.Option(5, "--folds", help="K of the out-of-fold probabilities."),
    threshold: float = typer.Option(
        0.99,
        "--threshold",
        help="Flag rows whose label is wrong with posterior probability at least S (the score). "
        "0.99: wrong beyond reasonable doubt; 0.5: more likely wrong than right (two to four "
        "times the rows, sibling mix-ups such as Tshirts for Tops among them).",
    ),
    hidden: int = typer.Option(
        512,
        "--hidden",
        help="Hidden width of the out-of-fold heads; 0: linear heads (about 5x faster, "
        "slightly weaker).",
    ),
    confident_learning: bool = typer.Option(
        False,
        "--confident-learning",
        help="Flag by cleanlab's find_label_issues per level instead of --threshold.",
    ),
    level: str = typer.Option(
        None,
        "--level",
        help="Score and flag by this taxonomy level alone (e.g. articleType): the posterior "
        "probability that the row's node there is wrong, the levels above right. Finds mix-ups "
        "among siblings (Tshirts for Tops) that the whole path's score ranks lower.",
    ),
    seed: int = typer.Option(0, "--seed", help="Same seed, same folds and heads."),
    top: int = typer.Option(15, "--top", help="Issues shown in the summary."),
    review: bool = typer.Option(
        True, "--review/--no-review", help="Also write the review page (review.html)."
    ),
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Rank every labelled row by how likely its label is wrong; write label_issues.parquet.

    Probabilities are out-of-fold (K folds grouped by item) from fast heads on cached frozen
    features, calibrated per level. Per level cleanlab scores the given label under
    P(node | given parent) and estimates how often that level is mislabelled. The score is the
    posterior probability that the row's label is wrong (0 to 1, Bayes' rule with those noise
    rates along the taxonomy); the suggested path is the best valid path, level the first level
    where they part. Rows scoring at least --threshold are flagged. Also flags near-identical
    photos with different labels and photos far from all others. Review the file with the review
    page, then apply the decisions with `dataset relabel`.

    Example: fashion-tagger audit data/products --folds 5 --json
    Example: fashion-tagger audit data/products --level articleType --threshold 0.9
    """
    from fashion_tagger.curation.audit import AuditConfig, audit
    from fashion_tagger.curation.review import write_review_page
    from fashion_tagger.curation.scoring import HeadConfig

    result = audit(
        directory,
        run_dir=run,
        config=AuditConfig(
            folds=folds,
            threshold=None if confident_learning else threshold,
            seed=seed,
            head=HeadConfig(hidden=hidden),
            level=level,
        ),
        progress=progress,
    )
    page = write_review_page(directory) if review else None
    if as_json:
        print_json(result.to_dict() | {"review": str(page) if page else None})
    else:
        _print_audit(result, page, directory, top)


def _print_audit(result: AuditResult, page: Path | None, directory: Path, top: int) -> None:
    """The audit's summary for a person: where the issues went, then tables by kind, by level
    and the `top` highest-scored issues."""
    console.print(
        f"[bold]{result.issues:,}[/] of {result.rows:,} rows flagged; written to {result.path}"
    )
    if page is not None:
        console.print(f"review them: fashion-tagger review {directory} (or open {page} "
                      f"offline), then: fashion-tagger dataset relabel {directory}")  # fmt: skip
    console.print(
        f"features: {result.backbone}, {result.embedded_now:,} images embedded now; "
        f"{result.seconds.get('features', 0):.0f} s features, "
        f"{result.seconds.get('scoring', 0):.0f} s scoring"
    )
    counts = Table("kind", "rows", title="issues by kind")
    for kind, n in result.by_kind.items():
        counts.add_row(kind, f"{n:,}")
    console.print(counts)
    levels = Table("level", "rows", title="issues by first level of disagreement")
    for name, n in result.by_level.items():
        levels.add_row(name, f"{n:,}")
    console.print(levels)
    table = Table("score", "kind", "item", "given", "suggested", title=f"top {top} issues")
    for row in result.top[:top]:
        table.add_row(
            f"{row['score']:.3f}",
            row["kind"],
            row["item_id"],
            " > ".join(row["given"]),
            " > ".join(row["suggested"]),
        )
    console.print(table)


@dataset_app.command("relabel")
def relabel_cmd(
    directory: Path = DIR,
    decisions: Path | None = typer.Option(
        None,
        "--decisions",
        help="The review page's exported decisions file (JSON); default: the decisions "
        "`fashion-tagger review DIR` stored in DIR/review/decisions.jsonl.",
    ),
    as_json: bool = JSON,
) -> None:
    """Apply a review's accepted label fixes; old labels stay in each row's meta.

    Each changed row keeps its previous labels in meta.label_history; every reviewed row records
    its decision in meta.review; dataset.json lists each change set (sha256 of the decisions).
    Applying the same decisions again changes nothing. A bad file changes nothing either.

    Example: fashion-tagger dataset relabel data/products
    Example: fashion-tagger dataset relabel data/products --decisions decisions.json
    """
    from fashion_tagger.curation.relabel import relabel

    result = relabel(directory, decisions)
    if as_json:
        print_json(result.to_dict())
        return
    if result.already_applied:
        console.print(f"change set {result.change_set[:12]} was already applied; nothing to do")
        return
    console.print(
        f"change set {result.change_set[:12]}: {result.changed:,} rows relabelled "
        f"({result.unchanged:,} already right), {result.accepted:,} accepted, "
        f"{result.rejected:,} rejected"
    )
    for path in result.new_paths:
        console.print(f"new class: {' > '.join(path)}")
