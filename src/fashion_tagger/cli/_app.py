"""The Typer app and the sub-apps each stage's verbs hang on."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    name="fashion-tagger",
    help="Tag fashion photos with a catalog's categories and attributes: build a dataset, "
    "train a hierarchical classifier, evaluate it, and put it to work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
import_app = typer.Typer(help="Import a known dataset into a dataset dir.", no_args_is_help=True)
dataset_app = typer.Typer(help="Inspect and change a dataset dir.", no_args_is_help=True)
crawl_app = typer.Typer(help="Build a dataset dir by crawling a marketplace.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(dataset_app, name="dataset")
app.add_typer(crawl_app, name="crawl")

console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    """Machine-readable output: one JSON object on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show a progress bar.")
WORKERS = typer.Option(None, "--workers", help="Decoding processes (default: all cores).")
