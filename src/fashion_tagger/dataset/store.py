"""The content-addressed image store: `images/<first two hex>/<sha256>.<ext>`, written once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

IMAGES_DIR = "images"
_made: set[Path] = set()


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
    the final name. It is not fsynced one by one (that cost 6 ms an image, 80% of an import):
    callers make a batch durable with `sync()` before a manifest refers to it. `replace=True`
    rewrites a stored file found unreadable (e.g. cut short by a power loss before a sync).
    """
    rel = relpath(sha256, ext)
    target = root / rel
    if replace or not target.exists():
        fd, tmp = _mkstemp(target)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return rel


def _mkstemp(target: Path) -> tuple[int, str]:
    """A temp file beside `target`; its folder is made once per process, not once per image."""
    if target.parent not in _made:
        target.parent.mkdir(parents=True, exist_ok=True)
        _made.add(target.parent)
    try:
        return tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except FileNotFoundError:  # the folder was removed since (e.g. a dataset dir deleted)
        target.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)


def sync() -> None:
    """Flush every image written so far to disk (one `sync` instead of one `fsync` per file)."""
    os.sync()
