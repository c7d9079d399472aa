"""Public PyTorch datasets for a user's own training loop: a dataset dir, the HDF5 export, shards.

`train` has its own fast path (a decoded, memory-mapped cache indexed a batch at a time); these
are for everyone else's loop, so they follow torch's conventions: `ImageDataset` and
`HDF5Dataset` are map-style, `ShardDataset` is an `IterableDataset`. Each item is
`(image, target)`: a PIL RGB image (or the transform's output) and a dict with `levels` (one
class index per taxonomy level, -1 below the path's depth, int64) and `attributes` (the
multi-hot over `attribute_names`, float32), both in the order `train` uses.

All three are safe in DataLoader workers under fork and spawn: `__init__` reads only the
manifest (or the HDF5 file's labels, or the shards' index), keeps it in compact arrays that
pickle quickly, and opens no file handle or object-store client that a worker would inherit;
each process opens its own on first use.
"""

from __future__ import annotations

import json
import os
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fashion_tagger import storage
from fashion_tagger.dataset import images
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.ingest import is_safe_relpath
from fashion_tagger.dataset.webdataset import INDEX_FILE, TAXONOMY_FILE
from fashion_tagger.errors import DatasetError
from fashion_tagger.taxonomy import Taxonomy, TaxonomyError

Transform = Callable[[Image.Image], Any]
MAX_MEMBER_BYTES = 256 * 1024 * 1024
"""The largest tar member a shard may hold: a hostile shard must not exhaust memory."""
SHUFFLE_BUFFER = 1000


class _Strings:
    """Many strings as one UTF-8 blob plus offsets: pickles in one copy, not one object each."""

    def __init__(self, values: Sequence[str]) -> None:
        encoded = [v.encode() for v in values]
        self.blob = b"".join(encoded)
        self.offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].decode()


def encode_levels(taxonomy: Taxonomy, paths: Sequence[Sequence[str]]) -> np.ndarray:
    """(N, depth) int64 class indices, -1 below each path's depth; an empty path is all -1."""
    out = np.full((len(paths), taxonomy.depth), -1, dtype=np.int64)
    try:
        for i, p in enumerate(paths):
            if p:
                out[i] = taxonomy.encode(p)
    except TaxonomyError as exc:
        raise DatasetError(f"row {i}: {exc}") from exc
    return out


class _Attributes:
    """Per-row attribute indices in CSR form (offsets + indices): a million rows with hundreds
    of attributes would be gigabytes as a dense multi-hot, a few megabytes like this."""

    def __init__(self, rows: Sequence[Sequence[str]], names: Sequence[str]) -> None:
        col = {n: j for j, n in enumerate(names)}
        idx = [[col[v] for v in r if v in col] for r in rows]
        self.width = len(names)
        self.indices = np.fromiter((j for r in idx for j in r), dtype=np.int32)
        self.offsets = np.cumsum([0, *map(len, idx)], dtype=np.int64)

    def dense(self, i: int) -> torch.Tensor:
        out = torch.zeros(self.width, dtype=torch.float32)
        out[torch.from_numpy(self.indices[self.offsets[i] : self.offsets[i + 1]]).long()] = 1.0
        return out


def _target(levels: np.ndarray, attributes: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"levels": torch.from_numpy(np.array(levels, dtype=np.int64)), "attributes": attributes}


class ImageDataset(torch.utils.data.Dataset):
    """The images of one split of a dataset dir (local, or an fsspec URL such as `s3://...`).

    Item `i` is `(image, target)`: the row's image as upright PIL RGB (or `transform(image)`),
    and `{"levels": int64 (depth,), "attributes": float32 (len(attribute_names),)}`. The
    taxonomy and attribute names are the whole dataset's, so every split shares one indexing;
    a row without a label (waiting for review) has levels all -1.

    On object storage each image is fetched into the local mirror on first use (as
    `Dataset.image_path` does), by each worker's own client.

    Example:
        >>> ds = ImageDataset("data/products", split="val", transform=T.ToTensor())
        >>> loader = DataLoader(ds, batch_size=64, num_workers=4)
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        split: str | None = "train",
        transform: Transform | None = None,
    ) -> None:
        ds = Dataset.open(dataset_dir)
        self.taxonomy: Taxonomy = ds.taxonomy
        self.attribute_names: list[str] = list(ds.attribute_names)
        part = ds if split is None else ds.split(split)
        if split is not None and len(part) == 0:
            raise DatasetError(
                f"{ds.url} has no {split!r} rows (it has {ds.split_counts()}); split it "
                f"first: fashion-tagger dataset split {ds.url} --val 0.15 --test 0.15"
            )
        rels = part.table.column("image").to_pylist()
        if bad := next((r for r in rels if not is_safe_relpath(r)), None):
            raise DatasetError(f"{ds.url}: image path {bad!r} leaves the dataset dir")
        self.split, self.transform = split, transform
        self.root, self.location = str(ds.root), ds.location
        self._images = _Strings(rels)
        self._levels = encode_levels(self.taxonomy, part.labels)
        self._attributes = _Attributes(
            part.table.column("attributes").to_pylist(), self.attribute_names
        )
        self._remote: tuple[int, storage.Remote] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_remote": None}  # each process opens its own client

    def __len__(self) -> int:
        return len(self._images)

    def _path(self, rel: str) -> str:
        path = os.path.join(self.root, rel)
        if self.location and not os.path.isfile(path):
            if self._remote is None or self._remote[0] != os.getpid():
                self._remote = (os.getpid(), storage.Remote.open(self.location))
            self._remote[1].fetch([rel], self.root, workers=1)
        return path

    def __getitem__(self, i: int) -> tuple[Any, dict[str, torch.Tensor]]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i %= len(self)
        img = images.decode(self._path(self._images[i]))
        x = self.transform(img) if self.transform is not None else img
        return x, _target(self._levels[i], self._attributes.dense(i))


def _h5_open(path: str):
    """An h5py file, read-only; a URL is read through fsspec (ranged reads, no full download)."""
    import h5py

    try:
        if storage.is_url(path):
            import fsspec

            return h5py.File(fsspec.open(path, "rb").open(), "r")
        return h5py.File(path, "r")
    except (OSError, FileNotFoundError) as exc:
        raise DatasetError(f"{path} is not a readable HDF5 file: {exc}") from exc


class HDF5Dataset(torch.utils.data.Dataset):
    """One split of the HDF5 export (`dataset export --format hdf5`): `<split>_images`,
    `<split>_labels` and `label_map`, whose names are label paths joined by `__`.

    The file holds no attributes, so `attribute_names` is empty and the target's `attributes`
    has length 0. Images are returned as PIL RGB (a greyscale export is converted). Each process
    (the main one, each DataLoader worker) opens its own h5py handle on first use: HDF5 handles
    must not cross a fork.

    Example:
        >>> ds = HDF5Dataset("export/products.h5", split="train", transform=T.ToTensor())
    """

    def __init__(
        self, path: str | Path, split: str = "train", transform: Transform | None = None
    ) -> None:
        from fashion_tagger.sources.hdf5 import parse_label_map

        self.path = storage.normalize(path) if storage.is_url(path) else str(path)
        self.split, self.transform = split, transform
        with _h5_open(self.path) as f:
            have = sorted(k[: -len("_images")] for k in f if k.endswith("_images"))
            if f"{split}_images" not in f or f"{split}_labels" not in f or "label_map" not in f:
                raise DatasetError(
                    f"{self.path} has no {split!r} split (it has {have}) or no label_map; "
                    "write one with: fashion-tagger dataset export DIR --format hdf5"
                )
            label_map = parse_label_map(list(f["label_map"][()]))
            labels = np.asarray(f[f"{split}_labels"][()], dtype=np.int64)
            levels = [
                v.decode() if isinstance(v, bytes) else str(v) for v in f.attrs.get("levels", [])
            ]
        if unknown := sorted(set(labels.tolist()) - set(label_map)):
            raise DatasetError(f"{self.path}: labels {unknown[:5]} are not in label_map")
        self.taxonomy = Taxonomy.from_paths(label_map.values(), levels or None)
        self.attribute_names: list[str] = []
        self._levels = encode_levels(self.taxonomy, [label_map[int(k)] for k in labels])
        self._file: tuple[int, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}

    def __len__(self) -> int:
        return len(self._levels)

    def _images(self):
        if self._file is None or self._file[0] != os.getpid():
            # a handle inherited through fork is left alone: closing it could touch the parent's
            self._file = (os.getpid(), _h5_open(self.path))
        return self._file[1][f"{self.split}_images"]

    def __getitem__(self, i: int) -> tuple[Any, dict[str, torch.Tensor]]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i %= len(self)
        pixels = np.asarray(self._images()[i])
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        img = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
        x = self.transform(img) if self.transform is not None else img
        return x, _target(self._levels[i], torch.zeros(0))


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's (rank, world size): as given, else torch.distributed's, else the
    launcher's environment (torchrun's RANK / WORLD_SIZE), else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        found = dist.get_rank(), dist.get_world_size()
    else:
        found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return (found[0] if rank is None else rank), (found[1] if world_size is None else world_size)


def _split_even(total: int, parts: int, k: int) -> int:
    """How many of `total` items part `k` of `parts` gets when items go round-robin."""
    return total // parts + (k < total % parts)


def plan_worker(
    counts: Sequence[int], order: Sequence[int], rank: int, world: int, worker: int, workers: int
) -> tuple[list[int], tuple[int, int, int, int], int]:
    """Which shards one DataLoader worker of one rank reads, which of their samples it keeps,
    and how many samples it yields; every rank yields `sum(counts) // world` in all.

    Shards go round-robin to ranks, then to the rank's workers; where there are fewer shards
    than ranks (or than a rank's workers) every one reads the shards and keeps every n-th
    sample instead. A rank whose shards hold more than its share stops early, one that holds
    fewer starts its shards again, so every rank runs the same number of steps (DDP needs it).

    Returns (shards to read, (rank modulus, rank remainder, worker modulus, worker remainder)
    on the running sample counts, samples to yield).
    """
    total = sum(counts)
    share = total // world
    if len(order) >= world:
        rank_shards, rank_mod = list(order[rank::world]), (1, 0)
        rank_count = sum(counts[s] for s in rank_shards)
    else:
        rank_shards, rank_mod = list(order), (world, rank)
        rank_count = _split_even(total, world, rank)
    if rank_mod[0] == 1 and len(rank_shards) >= workers:
        per_worker = [rank_shards[w::workers] for w in range(workers)]
        worker_counts = [sum(counts[s] for s in p) for p in per_worker]
        shards, worker_mod = per_worker[worker], (1, 0)
    else:
        worker_counts = [_split_even(rank_count, workers, w) for w in range(workers)]
        shards, worker_mod = rank_shards, (workers, worker)
    caps = [share * c // rank_count if rank_count else 0 for c in worker_counts]
    short = share - sum(caps)
    for w in range(workers):  # the remainder (fewer than `workers`) to the first that have data
        if short and worker_counts[w]:
            caps[w], short = caps[w] + 1, short - 1
    return shards, (*rank_mod, *worker_mod), caps[worker]


def _read_tar(opener: Callable[[], Any], where: str) -> Iterator[dict[str, bytes]]:
    """The samples of one shard, streamed: members grouped by key (the name before the first
    dot), as `{"__key__": ..., "<ext>": bytes}`. Names are only dictionary keys, never paths."""
    sample: dict[str, Any] = {}
    try:
        with opener() as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    raise DatasetError(f"{where}: member {member.name!r} is over 256 MiB")
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                f = tar.extractfile(member)
                sample.setdefault("__key__", key)
                sample[ext.lower()] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"{where} is not a readable tar shard: {exc}") from exc
    if sample:
        yield sample


class ShardDataset(torch.utils.data.IterableDataset):
    """One split of WebDataset shards written by `dataset export --format webdataset` (a local
    folder or an fsspec URL), streamed shard by shard: for data too large for a decoded cache.

    Shards are split per rank (`torch.distributed`, or RANK / WORLD_SIZE) and per DataLoader
    worker, and `len()` is the number of samples each rank yields per epoch,
    `samples // world_size`, the same on every rank and every epoch (see `plan_worker`). With
    `shuffle`, the shard order is permuted per epoch (call `set_epoch`) and samples pass
    through a shuffle buffer of `buffer` samples per worker.

    Items are `(image, target)` as `ImageDataset`'s, with the taxonomy and attribute names the
    export saved beside the shards (`taxonomy.json`, `index.json`).

    Example:
        >>> ds = ShardDataset("shards/products", split="train", transform=T.ToTensor(), shuffle=True)
        >>> loader = DataLoader(ds, batch_size=64, num_workers=4)
    """

    def __init__(
        self,
        source: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        buffer: int = SHUFFLE_BUFFER,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.source = (
            storage.normalize(source).rstrip("/") if storage.is_url(source) else str(source)
        )
        index, taxonomy = self._read_json(INDEX_FILE), self._read_json(TAXONOMY_FILE)
        if index.get("format") != "webdataset" or not isinstance(index.get("shards"), list):
            raise DatasetError(f"{self.source}/{INDEX_FILE} is not a webdataset index")
        shards = [s for s in index["shards"] if s.get("split", "") == (split or "")]
        if not shards:
            have = sorted({s.get("split") or "none" for s in index["shards"]})
            raise DatasetError(f"{self.source} has no {split!r} shards; it has {have}")
        names = [str(s["name"]) for s in shards]
        if bad := next((n for n in names if not is_safe_relpath(n) or "/" in n), None):
            raise DatasetError(f"{self.source}: shard name {bad!r} is not a file in the folder")
        try:
            self.taxonomy = Taxonomy.from_dict(taxonomy)
        except (TaxonomyError, KeyError, TypeError) as exc:
            raise DatasetError(f"{self.source}/{TAXONOMY_FILE} is not a taxonomy: {exc}") from exc
        self.attribute_names: list[str] = list(index.get("attribute_names", []))
        self.shards, self.counts = names, [int(s["samples"]) for s in shards]
        self.split, self.transform = split, transform
        self.shuffle, self.seed, self.buffer, self.epoch = shuffle, seed, buffer, 0
        self._given = (rank, world_size)
        self._checked()  # a rank outside the world is an error now, not at the first batch
        self._col = {n: j for j, n in enumerate(self.attribute_names)}

    @property
    def rank(self) -> int:
        """This process's rank: given, else looked up at each use, so a dataset made before
        `torch.distributed` starts (in the launcher's parent, say) still splits by rank."""
        return self._checked()[0]

    @property
    def world_size(self) -> int:
        return self._checked()[1]

    def _checked(self) -> tuple[int, int]:
        rank, world = _world(*self._given)
        if not 0 <= rank < world:
            raise DatasetError(f"rank {rank} is not in a world of {world}")
        return rank, world

    def _read_json(self, name: str) -> dict[str, Any]:
        try:
            if storage.is_url(self.source):
                data = storage.Remote.open(self.source).read_bytes(name)
                if data is None:
                    raise FileNotFoundError(name)
            else:
                data = (Path(self.source) / name).read_bytes()
            return json.loads(data)
        except (OSError, ValueError) as exc:
            raise DatasetError(
                f"{self.source} has no readable {name}; write shards with: "
                "fashion-tagger dataset export DIR --format webdataset --out SHARDS"
            ) from exc

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shard order (and buffer shuffle) the next iteration uses."""
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.counts) // self.world_size

    def _order(self) -> list[int]:
        order = list(range(len(self.shards)))
        if self.shuffle:  # the same permutation on every rank: seeded by epoch only
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def _opener(self, name: str) -> Callable[[], Any]:
        if storage.is_url(self.source):
            import fsspec

            return lambda: fsspec.open(f"{self.source}/{name}", "rb").open()
        return lambda: open(Path(self.source) / name, "rb")

    def _stream(self, shards: list[int], mods: tuple[int, int, int, int]) -> Iterator[dict]:
        """The worker's kept samples of its shards, once through."""
        rank_mod, rank_rem, worker_mod, worker_rem = mods
        k = m = 0
        for s in shards:
            name = self.shards[s]
            for sample in _read_tar(self._opener(name), f"{self.source}/{name}"):
                keep_rank = k % rank_mod == rank_rem
                k += 1
                if not keep_rank:
                    continue
                if m % worker_mod == worker_rem:
                    yield sample
                m += 1

    def _item(self, sample: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
        where = f"{self.source}: sample {sample.get('__key__')!r}"
        try:
            meta = json.loads(sample["json"])
            data = next(v for k, v in sample.items() if k not in ("__key__", "json"))
        except (KeyError, ValueError, StopIteration) as exc:
            raise DatasetError(f"{where} lacks its image or its JSON") from exc
        levels = encode_levels(self.taxonomy, [meta.get("labels") or []])[0]
        attrs = torch.zeros(len(self.attribute_names), dtype=torch.float32)
        for a in meta.get("attributes") or []:
            if a in self._col:
                attrs[self._col[a]] = 1.0
        img = images.decode(data)
        x = self.transform(img) if self.transform is not None else img
        return x, _target(levels, attrs)

    def __iter__(self) -> Iterator[tuple[Any, dict[str, torch.Tensor]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self._checked()
        shards, mods, cap = plan_worker(self.counts, self._order(), rank, world, worker, workers)
        rng = random.Random(hash((self.seed, self.epoch, rank, worker)))
        yielded, buf = 0, []
        while yielded < cap:
            before = yielded
            for sample in self._stream(shards, mods):
                if self.shuffle and self.buffer > 1:
                    buf.append(sample)
                    if len(buf) < self.buffer:
                        continue
                    sample = buf.pop(rng.randrange(len(buf)))
                yield self._item(sample)
                yielded += 1
                if yielded >= cap:
                    return
            rng.shuffle(buf)
            while buf and yielded < cap:
                yield self._item(buf.pop())
                yielded += 1
            if yielded == before:  # nothing readable: do not loop forever
                raise DatasetError(f"{self.source}: the {self.split!r} shards yielded no samples")
