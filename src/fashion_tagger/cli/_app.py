"""The Typer app and the sub-apps each stage's verbs hang on."""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

WORKFLOW = (
    "crawl", "import", "dataset", "train", "evaluate", "calibrate", "audit", "review", "label",
    "predict", "export", "serve", "quickstart",
)  # fmt: skip
"""Verbs in the order a user meets them; `--help` lists them so (others go before quickstart)."""


class HelpGroup(TyperGroup):
    """A group whose verb list shows each verb's first paragraph as one flowing sentence (rich
    keeps a docstring's line breaks there, which cut sentences in the middle)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for cmd in self.commands.values():
            if cmd.help and not cmd.short_help:
                first = inspect.cleandoc(cmd.help).split("\n\n", 1)[0]
                cmd.short_help = " ".join(first.split())


class WorkflowGroup(HelpGroup):
    """The top-level group: verbs listed in workflow order instead of registration order."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        def rank(name: str) -> tuple[int, str]:
            known = name in WORKFLOW
            return (2 * WORKFLOW.index(name) if known else 2 * len(WORKFLOW) - 3, name)

        return sorted(super().list_commands(ctx), key=rank)


app = typer.Typer(
    cls=WorkflowGroup,
    name="fashion-tagger",
    help="Tag fashion photos with a catalog's categories and attributes: build a dataset, "
    "train a hierarchical classifier, evaluate it, and put it to work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
import_app = typer.Typer(
    cls=HelpGroup, help="Import a known dataset into a dataset dir.", no_args_is_help=True
)
dataset_app = typer.Typer(
    cls=HelpGroup, help="Inspect and change a dataset dir.", no_args_is_help=True
)
crawl_app = typer.Typer(
    cls=HelpGroup, help="Build a dataset dir by crawling a marketplace.", no_args_is_help=True
)
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
