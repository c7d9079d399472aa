"""Atomic file writes: a reader sees the old file or the new one, never half of either.

The one place that writes temp file + rename for the whole package, the image store's per-image
hot path included, so it sticks to `os` calls (pathlib showed in import profiles).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@functools.cache
def _file_mode() -> int:
    """The mode a plain open() gives a new file: 0666 less the umask (read once: reading sets it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _mkstemp(path: str) -> tuple[int, str]:
    """A temp file beside `path` with a plain file's mode; its folder is made only if missing."""
    folder, name = os.path.split(path)
    folder = folder or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.fchmod(fd, _file_mode())  # mkstemp makes 0600
    return fd, tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed over `path`."""
    fd, tmp = _mkstemp(os.fspath(path))
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` atomically.

    Args:
        durable: fsync before the rename. A caller writing many files (the image store) may pass
            False and call `os.sync()` once before anything refers to them.
    """
    fd, tmp = _mkstemp(os.fspath(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    write_bytes_atomic(path, text.encode())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (weights files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
