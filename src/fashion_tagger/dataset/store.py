"""The content-addressed image store: `images/<first two hex>/<sha256>.<ext>`, written once."""

from __future__ import annotations

from pathlib import Path

from fashion_tagger._io import write_bytes_atomic

IMAGES_DIR = "images"


def relpath(sha256: str, ext: str) -> str:
    """The path of an image relative to the dataset dir."""
    return f"{IMAGES_DIR}/{sha256[:2]}/{sha256}.{ext}"


def put(root: Path, sha256: str, ext: str, data: bytes) -> str:
    """Store `data` unless an image with that hash is there already; return its relative path."""
    rel = relpath(sha256, ext)
    target = root / rel
    if not target.exists():
        write_bytes_atomic(target, data)
    return rel
