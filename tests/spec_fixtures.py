"""A small `ModelSpec` for tests of the model and its consumers (no training needed)."""

from __future__ import annotations

from fashion_tagger.model import ModelSpec
from fashion_tagger.taxonomy import Taxonomy

PATHS = [
    ("Apparel", "Topwear", "Shirts"),
    ("Apparel", "Bottomwear"),
    ("Footwear", "Shoes", "Flats"),
]


def make_spec(head: str = "unified", attrs: int = 2) -> ModelSpec:
    return ModelSpec(
        model_id="",
        backbone={"name": "simple-cnn", "pretrained": False, "in_chans": 3},
        head={"kind": head, "hidden": 16, "dropout": 0.0},
        input_size=(32, 24),
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        resize="squash",
        taxonomy=Taxonomy.from_paths(PATHS, ["master", "sub", "article"]),
        attribute_names=[f"season=s{i}" for i in range(attrs)],
    )
