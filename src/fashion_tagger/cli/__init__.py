"""The `fashion-tagger` command: a thin Typer app. Each module here parses one stage's verbs,
calls one library function, and prints; no logic lives in the CLI."""

from __future__ import annotations

import sys

# Each module registers its verbs on `app` when imported.
from fashion_tagger.cli import audit, crawl, data, dataset, deploy, evaluate, label, train  # noqa: F401
from fashion_tagger.cli._app import app, err_console
from fashion_tagger.errors import FashionTaggerError


def main() -> None:
    """Entry point: run the app; user errors become one red line and exit code 2."""
    try:
        app()
    except FashionTaggerError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; re-run the same command to resume")
        sys.exit(130)
    except OSError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


__all__ = ["app", "main"]
