"""The content-addressed image store: `images/<first two hex>/<sha256>.<ext>`, written once."""

from __future__ import annotations

from pathlib import Path

from fashion_tagger._io import write_bytes_atomic

IMAGES_DIR = "images"


def relpath(sha256: str, ext: str) -> str:
    """The path of an image relative to the dataset dir."""
    return f"{IMAGES_DIR}/{sha256[:2]}/{sha256}.{ext}"


def find(root: Path, sha256: str, exts: tuple[str, ...]) -> Path | None:
    """The stored file of an image with this hash, if any (one `stat` per candidate extension)."""
    folder = root / IMAGES_DIR / sha256[:2]
    for ext in exts:
        path = folder / f"{sha256}.{ext}"
        if path.is_file():
            return path
    return None


def put(root: Path, sha256: str, ext: str, data: bytes, *, replace: bool = False) -> str:
    """Store `data` unless an image with that hash is there already; return its relative path.

    The write is atomic (temp file + rename), so a killed import never leaves half a file under
    the final name. `replace=True` rewrites a stored file found unreadable (e.g. after a crash
    of the machine itself, which a rename does not guard against).
    """
    rel = relpath(sha256, ext)
    target = root / rel
    if replace or not target.exists():
        write_bytes_atomic(target, data)
    return rel
