"""Where datasets come from: one module per source, each registering an importer by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from fashion_tagger.errors import FashionTaggerError

_IMPORTERS: dict[str, str] = {
    "kaggle-products": "fashion_tagger.sources.kaggle_products:import_kaggle_products",
    "folders": "fashion_tagger.sources.folders:import_folders",
    "fashion-mnist": "fashion_tagger.sources.fashion_mnist:import_fashion_mnist",
    "csv": "fashion_tagger.sources.csv_manifest:import_csv",
    "sql": "fashion_tagger.sources.sql:import_sql",
    "hdf5": "fashion_tagger.sources.hdf5:import_hdf5",
    "zappos": "fashion_tagger.sources.zappos:import_zappos",
}


def list_importers() -> list[str]:
    return sorted(_IMPORTERS)


def get_importer(kind: str) -> Callable:
    """The import function registered as `kind` (imported lazily)."""
    if kind not in _IMPORTERS:
        raise FashionTaggerError(f"unknown importer {kind!r}; choose one of {list_importers()}")
    module, func = _IMPORTERS[kind].split(":")
    return getattr(importlib.import_module(module), func)
