"""File I/O every stage shares: atomic writes (a reader sees the old file or the new one, never
half of either), the check that an output does not land on an input, and reads of regular files
only.

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
from collections.abc import Iterable, Iterator
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


#: Files a run dir or a dataset dir owns (by the file that marks the dir): no command's output
#: may replace them, since the dir would no longer load or would silently change meaning.
OWNED_FILES: dict[str, frozenset[str]] = {
    "model.json": frozenset(
        {"model.json", "model.safetensors", "metrics.json", "checkpoints", "logs"}
    ),
    "dataset.json": frozenset(
        {"dataset.json", "items.parquet", "images", "crawl.db", "issues.parquet", "review"}
    ),
}


def check_output(out: str | os.PathLike[str], inputs: Iterable[Any] = ()) -> None:
    """Refuse an output path that is one of the command's own inputs, or a file that a run dir
    or dataset dir owns (`OWNED_FILES`), before anything is written: a `FashionTaggerError`,
    one line naming the path and why."""
    from fashion_tagger.errors import FashionTaggerError

    target = Path(os.path.abspath(out))
    real = Path(os.path.realpath(target))
    for item in inputs:
        p = Path(str(item))
        if p.exists() and (os.path.realpath(p) == str(real) or _same_file(p, target)):
            raise FashionTaggerError(
                f"--out {out} is one of this command's inputs; choose another path"
            )
    for path in {target, real}:
        for parent in path.parents:
            for marker, owned in OWNED_FILES.items():
                if (parent / marker).is_file():
                    first = path.relative_to(parent).parts[0]
                    if first in owned:
                        kind = "run dir" if marker == "model.json" else "dataset dir"
                        raise FashionTaggerError(
                            f"--out {out} would overwrite {first} of the {kind} {parent}; "
                            "choose a path outside what that dir owns"
                        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class NotARegularFile(OSError):
    """A path that names a FIFO, a device, a socket or a folder: reading one could block forever
    (a FIFO waits for a writer) or read without end, so only regular files are opened."""


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file; anything else raises `NotARegularFile` without opening it."""
    import stat

    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a FIFO"
            if stat.S_ISFIFO(mode)
            else "not a regular file"
        )
        raise NotARegularFile(f"{os.fspath(path)} is {kind}; only regular files are read")
    with open(path, "rb") as f:
        return f.read()
