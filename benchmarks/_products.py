"""The product photos as a split dataset dir, shared by the benchmarks that train on them."""

from __future__ import annotations

import time
from pathlib import Path


def prepare_products(
    data: Path, out: Path, *, workers: int, val: float = 0.15, test: float = 0.15
) -> Path:
    """Import the Kaggle product zip into `out` (once) and split it by item with seed 0."""
    from fashion_tagger.dataset import ops
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.sources.kaggle_products import import_kaggle_products

    if not (out / "items.parquet").is_file():
        t = time.perf_counter()
        import_kaggle_products(data, out, workers=workers, progress=False)
        print(f"imported {data} in {time.perf_counter() - t:.0f} s", flush=True)
    ds = Dataset.open(out)
    if not any(ds.table.column("split").to_pylist()):
        ds, _ = ops.split(ds, val=val, test=test, seed=0)
        ds.save()
    return out
