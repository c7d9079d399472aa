"""`Dataset`: the Python view of a dataset dir."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from fashion_tagger import _progress, storage
from fashion_tagger.dataset import images, manifest, store
from fashion_tagger.dataset.manifest import DatasetInfo
from fashion_tagger.errors import DatasetError
from fashion_tagger.taxonomy import Taxonomy

if TYPE_CHECKING:
    import pandas as pd


WRITER_LOCK = ".writer.lock"


@contextlib.contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    """One writer of a dataset dir's manifest at a time (an exclusive `flock`, held for the few
    milliseconds of a save; a second writer waits for it, then checks what it read is current)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: saves are not guarded against each other
        yield
        return
    with open(root / WRITER_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Dataset:
    """A dataset dir: its items table, its description, and helpers to read images.

    Datasets are immutable values: operations return a new `Dataset`, and `save()` writes it.
    Views derived from the table (labels, taxonomy, attribute names) are computed once.

    A dataset dir may live on object storage (`Dataset.open("s3://bucket/products")`): `root` is
    then the local mirror its images are fetched into (`local_images()` fetches a view's images
    concurrently; `image_path(i)` fetches one on demand), and `location` is the URL it is read
    from and saved to.

    Example:
        >>> ds = Dataset.open("data/products")
        >>> ds.taxonomy.level_names
        ('masterCategory', 'subCategory', 'articleType')
        >>> img = ds.load_image(0, size=224)
    """

    root: Path
    table: pa.Table
    info: DatasetInfo
    location: str = ""
    """Where the dataset lives when that is not `root`: the URL of a remote dataset dir."""
    read_from: tuple[Path, str] | None = None
    """(root, revision) of the dataset.json this view was opened from; `save()` to that root
    refuses when another writer has saved there since. None for a dataset not read from disk."""

    @classmethod
    def open(cls, location: str | Path) -> Dataset:
        """Read a dataset dir: a local folder or an fsspec URL (`s3://bucket/prefix`)."""
        if storage.is_url(location):
            url = storage.normalize(location).rstrip("/")
            table, info = manifest.read_remote(storage.Remote.open(url))
            return cls(storage.mirror_dir(url), table, info, url)
        root = Path(location)
        if not root.is_dir():
            raise DatasetError(f"dataset dir {root} does not exist")
        info = manifest.read_info(root)
        return cls(root, manifest.read_items(root), info, read_from=(root, info.revision))

    @classmethod
    def create(
        cls, location: str | Path, table: pa.Table, info: DatasetInfo | Mapping[str, Any]
    ) -> Dataset:
        """Write a new dataset dir (or replace the manifest of one) and return it.

        The images the rows name must be in the store already (local) or uploaded (remote).
        """
        if not isinstance(info, DatasetInfo):
            info = DatasetInfo.from_json(info)
        if storage.is_url(location):
            url = storage.normalize(location).rstrip("/")
            ds = cls(storage.mirror_dir(url), manifest.conform(table), info, url)
        else:
            ds = cls(Path(location), manifest.conform(table), info)
        return ds.save()

    def save(self) -> Dataset:
        """Write items.parquet, then dataset.json with fresh counts (each atomically, or in one
        PUT on object storage), so dataset.json only ever describes a complete manifest."""
        stamp = manifest.now()
        # the labelled rows may not reach every level yet (an auto-labelled dataset whose rows
        # all wait for review): keep the level names dataset.json already has
        levels = max(self.level_names, tuple(self.info.levels), key=len)
        info = replace(
            self.info,
            levels=levels,
            attribute_groups=tuple(self.attribute_groups),
            counts={
                "images": self.table.num_rows,
                "items": len(set(self.table.column("item_id").to_pylist())),
                "splits": self.split_counts(),
            },
            updated=stamp,
            created=self.info.created or stamp,
        )
        if self.is_remote:
            manifest.write_remote(storage.Remote.open(self.location), self.table, info)
            return replace(self, info=info)
        self.root.mkdir(parents=True, exist_ok=True)
        info = replace(info, revision=uuid.uuid4().hex)
        with _writer_lock(self.root):
            self._check_unchanged()
            manifest.write_items(self.root, self.table)
            manifest.write_info(self.root, info)
        return replace(self, info=info, read_from=(self.root, info.revision))

    def _check_unchanged(self) -> None:
        """Refuse to save over a manifest another command saved after this view read it: one of
        the two changes would be lost without a word (the caller holds the writer lock)."""
        if self.read_from is None or self.read_from[0] != self.root:
            return
        try:
            on_disk = manifest.read_info(self.root)
        except DatasetError:
            return  # gone or damaged: nothing on disk to lose by writing a whole manifest
        if on_disk.revision != self.read_from[1]:
            last = on_disk.history[-1].get("op", "?") if on_disk.history else "?"
            raise DatasetError(
                f"dataset {self.root} was changed by another command ({last!r}, saved at "
                f"{on_disk.updated}) after this one read it; nothing was written: re-run "
                "this command to apply it to the current dataset"
            )

    def with_table(self, table: pa.Table, **info: Any) -> Dataset:
        """The same dataset with other rows (and optionally other info fields); not yet saved."""
        return replace(self, table=manifest.conform(table), info=replace(self.info, **info))

    def with_history(self, op: str, args: Mapping[str, Any], result: Any) -> Dataset:
        """The same dataset with one more entry in dataset.json's history; not yet saved."""
        return replace(self, info=self.info.with_history(op, args, result))

    # -- where it lives -----------------------------------------------------------------------
    @property
    def is_remote(self) -> bool:
        return bool(self.location)

    @property
    def url(self) -> str:
        """The dataset dir as the user names it: its path, or its URL on object storage."""
        return self.location or str(self.root)

    # -- views --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def name(self) -> str:
        return self.info.name or self.url.rstrip("/").rsplit("/", 1)[-1]

    def to_pandas(self) -> pd.DataFrame:
        """The items table as a DataFrame (pandas is imported only here: the CLI starts faster)."""
        return self.table.to_pandas()

    @cached_property
    def labels(self) -> list[list[str]]:
        return self.table.column("labels").to_pylist()

    @cached_property
    def level_names(self) -> tuple[str, ...]:
        depth = max((len(p) for p in self.labels), default=0)
        given = list(self.info.levels)
        return tuple(given[:depth] + [f"level{d}" for d in range(len(given), depth)])

    @cached_property
    def taxonomy(self) -> Taxonomy:
        return Taxonomy.from_paths(self.labels, self.level_names)

    @cached_property
    def attribute_names(self) -> list[str]:
        """Every `group=value` attribute present, sorted."""
        values = pc.list_flatten(self.table.column("attributes")).to_pylist()
        return sorted(set(values))

    @property
    def attribute_groups(self) -> list[str]:
        return sorted({a.split("=", 1)[0] for a in self.attribute_names})

    def split_counts(self) -> dict[str, int]:
        counts = Counter(self.table.column("split").to_pylist())
        return {(k or "none"): v for k, v in sorted(counts.items())}

    def split(self, name: str) -> Dataset:
        """Only the rows of one split (`train`, `val`, `test`)."""
        mask = pc.equal(self.table.column("split"), name)
        return replace(self, table=self.table.filter(mask))

    def labelled(self) -> Dataset:
        """Only the rows that carry a label path (auto-labelled rows waiting for review have
        none)."""
        mask = pc.greater(pc.list_value_length(self.table.column("labels")), 0)
        return replace(self, table=self.table.filter(mask))

    def meta(self, i: int) -> dict[str, Any]:
        return json.loads(self.table.column("meta")[i].as_py() or "{}")

    # -- images -------------------------------------------------------------------------------
    def image_path(self, i: int) -> Path:
        """Row `i`'s image as a local file (fetched into the mirror first if remote)."""
        rel = self.table.column("image")[i].as_py()
        path = self.root / rel
        if self.is_remote and not path.is_file():
            storage.Remote.open(self.location).fetch([rel], self.root, workers=1)
        return path

    def load_image(self, i: int, size: int | None = None) -> Image.Image:
        """Row `i`'s image as upright RGB; `size` lets large JPEGs decode at reduced scale."""
        return images.decode(self.image_path(i), size=size)

    def local_images(self, workers: int | None = None, progress: bool = False) -> Path:
        """The local folder where this view's images are (`root / row's image`), fetched there
        first, concurrently, when the dataset is remote; images already fetched are kept.

        Images missing from the remote store are left missing, as a local dataset's would be.
        """
        if not self.is_remote:
            return self.root
        rels = sorted(set(self.table.column("image").to_pylist()))
        todo = [r for r in rels if not os.path.isfile(os.path.join(self.root, r))]
        if todo:
            remote = storage.Remote.open(self.location)
            with _progress.bar("fetching images", total=len(todo), enabled=progress) as bar:
                remote.fetch(todo, self.root, workers or storage.FETCH_WORKERS, bar.advance)
        return self.root

    def missing_images(self) -> list[str]:
        """Relative paths in the manifest whose file is not in the store (local or remote)."""
        rels = set(self.table.column("image").to_pylist())
        if self.is_remote:
            return sorted(rels - storage.Remote.open(self.location).listing(store.IMAGES_DIR))
        return sorted(p for p in rels if not (self.root / p).is_file())

    def copy_to(self, location: str | Path, progress: bool = False) -> Dataset:
        """The same rows as a dataset dir at `location`, with the images the rows name copied
        there (hard-linked where possible; on object storage only the ones it lacks). Not saved:
        call `save()`, which writes the manifest after every image is in place."""
        src = self.local_images(progress=progress)
        rels = sorted(set(self.table.column("image").to_pylist()))
        if storage.is_url(location):
            url = storage.normalize(location).rstrip("/")
            remote = storage.Remote.open(url)
            todo = sorted(set(rels) - remote.listing(store.IMAGES_DIR))
            with _progress.bar("uploading images", total=len(todo), enabled=progress) as bar:
                remote.upload(todo, src, on_done=bar.advance)
            return replace(self, root=storage.mirror_dir(url), location=url, read_from=None)
        out = Path(location)
        for rel in rels:
            store.link_or_copy(src / rel, out / rel)
        return replace(self, root=out, location="", read_from=None)
