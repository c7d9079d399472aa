"""`fashion-tagger import <kind> SRC --out DIR`: one verb per importer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fashion_tagger.cli._app import PROGRESS, WORKERS, console, import_app, print_json

OUT = typer.Option(..., "--out", "-o", help="Dataset dir to write (created; resumable).")
JSON = typer.Option(False, "--json", help="Print the import report as JSON.")


def report(result, as_json: bool) -> None:
    """Print what an import did: counts, and why records were skipped."""
    rep = result.report
    if as_json:
        print_json(
            {k: v for k, v in rep.items() if k != "skipped_records"}
            | {"out": str(result.dataset.root)}
        )
        return
    if result.up_to_date:
        console.print(
            f"[green]{result.dataset.root}[/] is already imported with these arguments; nothing to do."
        )
        return
    verb = "resumed and imported" if result.resumed else "imported"
    console.print(
        f"{verb} [bold]{rep.get('imported', len(result.dataset))}[/] images into {result.dataset.root}"
    )
    if rep.get("skipped"):
        table = Table("skipped because", "count", title=f"{rep['skipped']} records skipped")
        for reason, n in rep["reasons"].items():
            table.add_row(reason, str(n))
        console.print(table)
        console.print(f"details: {result.dataset.root / 'import_report.json'}")


@import_app.command("folders")
def import_folders_cmd(
    src: Path = typer.Argument(..., help="Root folder of the image tree."),
    out: Path = OUT,
    levels: list[str] = typer.Option(None, "--level", help="Name of a level, root first (repeat)."),
    workers: int = WORKERS,
    progress: bool = PROGRESS,
    as_json: bool = JSON,
) -> None:
    """Import a folder tree: nested folders are category levels, `a__b` splits into levels, a
    top-level train/validation/test folder is the split.

    Example: fashion-tagger import folders ../shared/datasets/clothing-dataset-small --out data/clothing
    """
    from fashion_tagger.sources.folders import import_folders

    report(
        import_folders(src, out, levels=levels or None, workers=workers, progress=progress), as_json
    )
