"""Where a dataset dir lives: a local folder, or any fsspec URL (`s3://bucket/prefix`, `gs://...`).

A dataset dir on object storage keeps the local layout object for object. Credentials and
endpoints come only from the standard places of the storage's own client: for S3 the `AWS_*`
environment variables (`AWS_ENDPOINT_URL` for an S3-compatible server), `~/.aws/config`, or
fsspec's configuration (`FSSPEC_S3_*` variables, `~/.config/fsspec`); never from the dataset dir.

Images are read through a local mirror under `$FASHION_TAGGER_CACHE` (default
`~/.cache/fashion-tagger`)`/datasets/<hash of the URL>/`, fetched concurrently and checked
against their content address, so training and prediction read plain local files.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from fashion_tagger._io import write_bytes_atomic
from fashion_tagger.errors import FashionTaggerError, require

FETCH_WORKERS = 16
"""Requests in flight when fetching or uploading images: object stores answer each in tens of
milliseconds, so throughput comes from concurrency, not from cores."""

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")
_COLLAPSED = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):/(?!/)(.*)$")


class StorageError(FashionTaggerError):
    """Object storage refused or failed a request (credentials, bucket, endpoint)."""


def normalize(location: str | os.PathLike[str]) -> str:
    """The location as a string; a URL that went through `pathlib` (`s3:/b/k`) gets its `//` back.

    Schemes of one letter are Windows drives, not URLs, and are left alone.
    """
    text = os.fspath(location)
    if isinstance(location, PurePath) and (m := _COLLAPSED.match(text)):
        return f"{m.group(1)}://{m.group(2)}"
    return text


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether `location` names object storage (any fsspec URL but `file://`)."""
    m = _URL.match(normalize(location))
    return bool(m) and m.group(1).lower() != "file"


def cache_root() -> Path:
    """The user's cache: $FASHION_TAGGER_CACHE, else `$XDG_CACHE_HOME/fashion-tagger`."""
    if env := os.environ.get("FASHION_TAGGER_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "fashion-tagger"


def mirror_dir(url: str) -> Path:
    """The local folder that mirrors the images of the remote dataset dir `url`."""
    url = normalize(url).rstrip("/")
    return cache_root() / "datasets" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _check_sha(rel: str, data: bytes) -> bool:
    """Whether `data` matches the content address in its file name (`.../<sha256>.<ext>`)."""
    stem = rel.rsplit("/", 1)[-1].split(".", 1)[0]
    if len(stem) != 64:
        return True  # not content-addressed: nothing to check against
    return hashlib.sha256(data).hexdigest() == stem


@dataclass(frozen=True)
class Remote:
    """A folder on object storage, addressed by paths relative to it (`items.parquet`,
    `images/ab/ab...jpg`), as the local dataset dir is."""

    url: str
    fs: Any
    root: str

    @classmethod
    def open(cls, url: str | os.PathLike[str]) -> Remote:
        """The filesystem of `url`, set up from the environment and fsspec's config only."""
        require("fsspec", "s3")
        import fsspec

        url = normalize(url).rstrip("/")
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            scheme = url.split(":", 1)[0]
            raise StorageError(
                f"cannot open {url}: {exc}. For {scheme}:// install its fsspec driver "
                "(s3: pip install 'fashion-tagger[s3]')."
            ) from exc
        return cls(url, fs, root.rstrip("/"))

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one request, turning the client's errors into one line that says what failed."""
        try:
            return fn()
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageError(
                f"{what} {self.url} failed: {exc}. Check the credentials and endpoint in the "
                "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)."
            ) from exc

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        try:
            return self._call("reading", lambda: self.fs.cat_file(self.path(rel)))
        except FileNotFoundError:
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """One PUT: an object store replaces an object whole, so readers see old or new."""
        self._call("writing", lambda: self.fs.pipe_file(self.path(rel), data))

    def put_file(self, local: str | Path, rel: str) -> None:
        self._call("uploading to", lambda: self.fs.put_file(str(local), self.path(rel)))

    def listing(self, prefix: str) -> set[str]:
        """Relative paths of every object under `prefix` (a few LIST calls, not one per file)."""
        base = self.path(prefix)
        self.fs.invalidate_cache()  # our own writes since the last listing must show
        try:
            found = self._call("listing", lambda: self.fs.find(base))
        except FileNotFoundError:
            return set()
        cut = len(self.root) + 1
        return {p[cut:] for p in found}

    def fetch(
        self,
        rels: Iterable[str],
        dest: str | Path,
        workers: int = FETCH_WORKERS,
        on_done: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Download `rels` to the same paths under `dest`, concurrently; return those missing.

        Each file is written atomically and only if its bytes match the sha256 in its name, so the
        mirror never holds a partial or wrong image under a final name.
        """
        dest = os.fspath(dest)

        def one(rel: str) -> str | None:
            data = self.read_bytes(rel)
            if data is None or not _check_sha(rel, data):
                return rel
            write_bytes_atomic(os.path.join(dest, rel), data, durable=False)
            return None

        return self._pooled(one, list(rels), workers, on_done)

    def upload(
        self,
        rels: Iterable[str],
        src: str | Path,
        workers: int = FETCH_WORKERS,
        on_done: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Upload `src/<rel>` to `<rel>` for each rel, concurrently; return those unreadable."""
        src = os.fspath(src)

        def one(rel: str) -> str | None:
            local = os.path.join(src, rel)
            if not os.path.isfile(local):
                return rel
            self.put_file(local, rel)
            return None

        return self._pooled(one, list(rels), workers, on_done)

    @staticmethod
    def _pooled(
        fn: Callable[[str], str | None],
        rels: list[str],
        workers: int,
        on_done: Callable[[int], None] | None,
    ) -> list[str]:
        failed: list[str] = []
        if not rels:
            return failed
        with ThreadPoolExecutor(max(1, min(workers, len(rels)))) as pool:
            for res in pool.map(fn, rels):
                if res is not None:
                    failed.append(res)
                if on_done is not None:
                    on_done(1)
        return failed


def local_copies(
    url: str | os.PathLike[str],
    extensions: Iterable[str],
    workers: int = FETCH_WORKERS,
) -> list[Path]:
    """Local copies of the files under the folder (or glob) `url` whose suffix is in `extensions`
    (`.jpg`...), fetched concurrently into the URL's mirror; sorted by key.

    This is what `predict` reads for a URL: a dataset dir on object storage (its `images/`), or
    any folder of photos. A copy is kept while its size matches the object's, and a
    content-addressed one only if its bytes hash to its name.
    """
    url = normalize(url).rstrip("/")
    exts = {e.lower() for e in extensions}
    base, pattern = url, None
    if any(c in url for c in "*?["):
        base = url[: min(url.index(c) for c in "*?[" if c in url)].rsplit("/", 1)[0]
        pattern = url
    remote = Remote.open(base)
    try:
        found = remote._call("listing", lambda: remote.fs.find(remote.root, detail=True))
    except FileNotFoundError:
        found = {}
    cut = len(remote.root) + 1
    sizes = {p[cut:]: int(d.get("size") or 0) for p, d in found.items()}
    if pattern is not None:
        import fnmatch

        sizes = {r: n for r, n in sizes.items() if fnmatch.fnmatch(f"{base}/{r}", pattern)}
    rels = sorted(r for r in sizes if os.path.splitext(r)[1].lower() in exts)
    dest = mirror_dir(base)
    todo = [r for r in rels if not (dest / r).is_file() or (dest / r).stat().st_size != sizes[r]]
    missing = set(remote.fetch(todo, dest, workers))
    return [dest / r for r in rels if r not in missing]
