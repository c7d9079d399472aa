"""`Dataset`: the Python view of a dataset dir."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from fashion_tagger.dataset import images, manifest
from fashion_tagger.errors import DatasetError
from fashion_tagger.taxonomy import Taxonomy


@dataclass(frozen=True)
class Dataset:
    """A dataset dir: its items table, its description, and helpers to read images.

    Datasets are immutable values: operations return a new `Dataset`, and `save()` writes it.
    Views derived from the table (labels, taxonomy, attribute names) are computed once.

    Example:
        >>> ds = Dataset.open("data/products")
        >>> ds.taxonomy.level_names
        ('masterCategory', 'subCategory', 'articleType')
        >>> img = ds.load_image(0, size=224)
    """

    root: Path
    table: pa.Table
    info: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path) -> Dataset:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset dir {root} does not exist")
        return cls(root, manifest.read_items(root), manifest.read_info(root))

    @classmethod
    def create(cls, root: str | Path, table: pa.Table, info: dict[str, Any]) -> Dataset:
        """Write a new dataset dir (or replace the manifest of one) and return it."""
        ds = cls(Path(root), manifest.conform(table), info)
        return ds.save()

    def save(self) -> Dataset:
        """Write items.parquet, then dataset.json with fresh counts; both atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        info = dict(self.info)
        info.pop("format_version", None)
        info["levels"] = list(self.level_names)
        info["attribute_groups"] = self.attribute_groups
        info["counts"] = {
            "images": self.table.num_rows,
            "items": len(set(self.table.column("item_id").to_pylist())),
            "splits": self.split_counts(),
        }
        info["updated"] = manifest.now()
        info.setdefault("created", info["updated"])
        manifest.write_items(self.root, self.table)
        manifest.write_info(self.root, info)
        return Dataset(self.root, self.table, {"format_version": manifest.FORMAT_VERSION, **info})

    def with_table(self, table: pa.Table, **info: Any) -> Dataset:
        """The same dataset with other rows (and optionally updated info); not yet saved."""
        return Dataset(self.root, manifest.conform(table), {**self.info, **info})

    # -- views --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.root.name)

    def to_pandas(self) -> pd.DataFrame:
        return self.table.to_pandas()

    @cached_property
    def labels(self) -> list[list[str]]:
        return self.table.column("labels").to_pylist()

    @cached_property
    def level_names(self) -> tuple[str, ...]:
        depth = max((len(p) for p in self.labels), default=0)
        given = list(self.info.get("levels") or [])
        return tuple(given[:depth] + [f"level{d}" for d in range(len(given), depth)])

    @cached_property
    def taxonomy(self) -> Taxonomy:
        return Taxonomy.from_paths(self.labels, self.level_names)

    @cached_property
    def attribute_names(self) -> list[str]:
        """Every `group=value` attribute present, sorted."""
        values = pc.list_flatten(self.table.column("attributes")).to_pylist()
        return sorted(set(values))

    @property
    def attribute_groups(self) -> list[str]:
        return sorted({a.split("=", 1)[0] for a in self.attribute_names})

    def split_counts(self) -> dict[str, int]:
        counts = Counter(self.table.column("split").to_pylist())
        return {(k or "none"): v for k, v in sorted(counts.items())}

    def split(self, name: str) -> Dataset:
        """Only the rows of one split (`train`, `val`, `test`)."""
        mask = pc.equal(self.table.column("split"), name)
        return Dataset(self.root, self.table.filter(mask), self.info)

    def meta(self, i: int) -> dict[str, Any]:
        return json.loads(self.table.column("meta")[i].as_py() or "{}")

    # -- images -------------------------------------------------------------------------------
    def image_path(self, i: int) -> Path:
        return self.root / self.table.column("image")[i].as_py()

    def load_image(self, i: int, size: int | None = None) -> Image.Image:
        """Row `i`'s image as upright RGB; `size` lets large JPEGs decode at reduced scale."""
        return images.decode(self.image_path(i), size=size)

    def missing_images(self) -> list[str]:
        """Relative paths in the manifest whose file is not in the store."""
        return [
            p for p in set(self.table.column("image").to_pylist()) if not (self.root / p).is_file()
        ]
