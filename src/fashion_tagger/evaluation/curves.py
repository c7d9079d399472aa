"""Training curves: loss and per-level validation accuracy per epoch, from the run's metrics.csv.

Training only logs the numbers (`logs/metrics.csv`); drawing them is the report side's job. The
callers of `train` that show a run to a person (the CLI, quickstart) draw `curves.png` right
after it, and `evaluate` draws it when it is missing, so the report always has its curves.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from fashion_tagger._io import atomic_path
from fashion_tagger.model.rundir import RunPaths


def _by_epoch(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    """(epochs from 1, mean of `key` per epoch): a resumed run may log an epoch twice."""
    values: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        if key in r and "epoch" in r and not math.isnan(r[key]):
            values[r["epoch"]].append(r[key])
    epochs = sorted(values)
    return [e + 1 for e in epochs], [sum(values[e]) / len(values[e]) for e in epochs]


def plot_curves(rows: list[dict[str, float]]) -> Any | None:
    """A matplotlib figure of the losses and validation accuracies, or None without data."""
    losses = [k for k in ("train_loss", "val_loss") if any(k in r for r in rows)]
    accs = sorted({k for r in rows for k in r if k.startswith("val_acc_")})
    if not rows or not (losses or accs):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2 if accs else 1, figsize=(10 if accs else 5.5, 3.6), squeeze=False)
    for key in losses:
        axes[0, 0].plot(*_by_epoch(rows, key), marker="o", ms=3, label=key)
    axes[0, 0].set(xlabel="epoch", ylabel="loss", title="loss")
    if accs:
        for key in accs:
            axes[0, 1].plot(*_by_epoch(rows, key), marker="o", ms=3, label=key[len("val_acc_") :])
        axes[0, 1].set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    for ax in axes.flat:
        ax.legend(frameon=False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def draw_curves(run_dir: str | Path | RunPaths) -> Path | None:
    """Draw the run's `curves.png` from its `logs/metrics.csv` (atomically); None without data."""
    paths = run_dir if isinstance(run_dir, RunPaths) else RunPaths(Path(run_dir))
    fig = plot_curves(paths.read_metrics())
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    with atomic_path(paths.curves) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths.curves
