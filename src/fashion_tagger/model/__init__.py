"""What every stage shares: the model's spec, backbones and their weights, heads, decoding,
preprocessing, loading and the run dir. Imports no stage package (training, inference,
evaluation, serving).

    spec.py        ModelSpec and the typed head specs (model.json's contract, torch-free)
    rundir.py      RunDir: the run dir's files and model.json, opened and validated
    backbones.py   simple-cnn and timm backbones, their default input
    weights.py     pretrained weights sources and key converters
    heads.py       the head registry: unified, multi, flat
    load.py        FashionModel = backbone + head; build_model, load_model
    decode.py      LeafTable: the best valid path, numpy and torch twins
    preprocess.py  image -> normalised model input (numpy; a torch twin of the normalisation)

Names are imported on first use, so `from fashion_tagger.model import ModelSpec` (and
`--help`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from fashion_tagger.model.rundir import RunDir, RunPaths, save_model
from fashion_tagger.model.spec import HeadSpec, ModelError, ModelSpec, head_kinds, head_spec

_LAZY = {
    "FashionModel": "load",
    "build_model": "load",
    "load_model": "load",
    "create_backbone": "backbones",
    "backbone_data_config": "backbones",
    "create_head": "heads",
    "list_heads": "heads",
    "LeafTable": "decode",
    "load_for_model": "preprocess",
    "normalize": "preprocess",
}

__all__ = [
    "HeadSpec",
    "ModelError",
    "ModelSpec",
    "RunDir",
    "RunPaths",
    "head_kinds",
    "head_spec",
    "save_model",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"fashion_tagger.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fashion_tagger.model' has no attribute {name!r}")
