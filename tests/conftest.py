"""Shared test fixtures: small, generic, made on the fly."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

DATASETS = Path(__file__).parents[1].parent / "shared" / "datasets"


@pytest.fixture
def datasets_dir() -> Path:
    """The shared real datasets (`../shared/datasets` from the repo root)."""
    if not DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {DATASETS}")
    return DATASETS


def image_bytes(
    fmt: str = "JPEG", size: tuple[int, int] = (16, 12), color=(200, 30, 30), mode="RGB", **save
) -> bytes:
    """A small solid image encoded in `fmt`; vary `color` to get distinct hashes."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt, **save)
    return buf.getvalue()


@pytest.fixture
def make_image():
    """`make_image(path, **kw)` writes `image_bytes(**kw)` to `path` (parents created)."""

    def make(path: Path, **kwargs) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(**kwargs))
        return path

    return make
