"""`fashion-tagger dataset ...`: inspect and change a dataset dir."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fashion_tagger.cli._app import console, dataset_app, print_json

DIR = typer.Argument(..., help="A dataset dir (written by import or crawl).")


@dataset_app.command("info")
def info_cmd(
    directory: Path = DIR,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    top: int = typer.Option(10, "--top", help="Classes shown per level (JSON: all when 0)."),
) -> None:
    """Counts per level and class, attributes, splits and missing images.

    Example: fashion-tagger dataset info data/products --json
    """
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.dataset.info import describe

    d = describe(Dataset.open(directory), top=(top or None) if not as_json else None)
    if as_json:
        print_json(d)
        return
    console.print(
        f"[bold]{d['name']}[/]  {d['images']:,} images, {d['items']:,} items, "
        f"{d['leaves']:,} leaf classes, {d['missing_images']} missing images"
    )
    console.print("splits: " + ", ".join(f"{k} {v:,}" for k, v in d["splits"].items()))
    for level in d["levels"]:
        table = Table("class", "images", title=f"{level['name']}: {level['classes']} classes")
        for name, n in list(level["counts"].items())[:top]:
            table.add_row(name, f"{n:,}")
        console.print(table)
    if d["attributes"]:
        console.print(
            "attributes: " + ", ".join(f"{g} ({n} values)" for g, n in d["attributes"].items())
        )
