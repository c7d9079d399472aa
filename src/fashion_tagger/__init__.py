"""fashion-tagger: classify fashion photos into a catalog's category tree and attributes.

The public API; everything else is machinery.
"""

from __future__ import annotations

from fashion_tagger._version import __version__
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.taxonomy import Taxonomy

__all__ = [
    "Dataset",
    "FashionTaggerError",
    "HDF5Dataset",
    "ImageDataset",
    "ShardDataset",
    "Tagger",
    "Taxonomy",
    "TrainConfig",
    "__version__",
    "calibrate",
    "evaluate",
    "get_importer",
    "list_importers",
    "train",
]

# Imported on first use, so `import fashion_tagger` (and `--help`) does not import torch.
_LAZY = {
    "Tagger": "fashion_tagger.inference.tagger",
    "TrainConfig": "fashion_tagger.training.config",
    "train": "fashion_tagger.training.train",
    "evaluate": "fashion_tagger.evaluation",
    "calibrate": "fashion_tagger.evaluation",
    "get_importer": "fashion_tagger.sources",
    "list_importers": "fashion_tagger.sources",
    "ImageDataset": "fashion_tagger.training.datasets",
    "HDF5Dataset": "fashion_tagger.training.datasets",
    "ShardDataset": "fashion_tagger.training.datasets",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fashion_tagger' has no attribute {name!r}")
