"""`dataset info`: what a dataset dir holds."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from fashion_tagger.dataset.core import Dataset


def describe(ds: Dataset, top: int | None = None) -> dict[str, Any]:
    """Counts per level and class, attributes, splits and missing images, as one dict.

    Args:
        top: keep only the `top` most frequent classes per level in `classes` (None: all).
    """
    labels = ds.labels
    levels = []
    for d, name in enumerate(ds.level_names):
        counts = Counter(p[d] for p in labels if len(p) > d)
        levels.append(
            {
                "name": name,
                "classes": len(counts),
                "images": sum(counts.values()),
                "counts": dict(counts.most_common(top)),
            }
        )
    leaves = Counter(tuple(p) for p in labels)
    attributes: dict[str, Counter] = {}
    for attrs in ds.table.column("attributes").to_pylist():
        for a in attrs:
            group, _, value = a.partition("=")
            attributes.setdefault(group, Counter())[value] += 1
    return {
        "name": ds.name,
        "path": ds.url,
        "images": len(ds),
        "items": len(set(ds.table.column("item_id").to_pylist())),
        "unique_images": len(set(ds.table.column("sha256").to_pylist())),
        "levels": levels,
        "leaves": len(leaves),
        "splits": ds.split_counts(),
        "attributes": {g: len(c) for g, c in sorted(attributes.items())},
        "attribute_values": {g: dict(c.most_common(top)) for g, c in sorted(attributes.items())},
        "missing_images": len(ds.missing_images()),
        "sources": [asdict(s) for s in ds.info.sources],
    }
