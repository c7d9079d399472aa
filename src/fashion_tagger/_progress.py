"""Progress bars for long work (rich), silent when asked or when output is not a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class Bar:
    """A handle on one bar: `advance(n)`, or nothing at all when disabled."""

    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def update(self, **kwargs) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, **kwargs)


@contextlib.contextmanager
def bar(description: str, total: int | None = None, enabled: bool = True) -> Iterator[Bar]:
    """Show a progress bar on stderr while the block runs."""
    if not enabled or not sys.stderr.isatty():
        yield Bar(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        yield Bar(progress, progress.add_task(description, total=total))
