"""The public PyTorch datasets: lengths, items, targets, DataLoader workers under fork and spawn,
and the shard split per rank and per worker."""

from __future__ import annotations

import hashlib
import multiprocessing
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from run_fixtures import make_synthetic_dataset
from s3_server import s3_bucket_fixture, s3_endpoint_fixture  # noqa: F401
from torch.utils.data import DataLoader

import fashion_tagger
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.export import export
from fashion_tagger.dataset.webdataset import export_webdataset
from fashion_tagger.errors import DatasetError
from fashion_tagger.training import datasets as tds

T = pytest.importorskip("torchvision.transforms")
SIZE = 20
TRANSFORM = T.Compose([T.Resize((SIZE, SIZE)), T.ToTensor()])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("tds")
    root = make_synthetic_dataset(tmp / "ds", n=60, seed=4, ragged=True)
    ds = Dataset.open(root)
    export(ds, "hdf5", tmp / "ds.h5", size=24)
    export_webdataset(root, tmp / "shards", shard_size="6kB")
    return SimpleNamespace(root=root, ds=ds, h5=tmp / "ds.h5", shards=tmp / "shards")


def test_top_level_names_are_lazy() -> None:
    """`import fashion_tagger` must not import torch; the names resolve on first use."""
    code = "import sys, fashion_tagger; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert fashion_tagger.ImageDataset is tds.ImageDataset
    assert fashion_tagger.HDF5Dataset is tds.HDF5Dataset
    assert fashion_tagger.ShardDataset is tds.ShardDataset
    assert {"ImageDataset", "HDF5Dataset", "ShardDataset"} <= set(fashion_tagger.__all__)


def test_image_dataset_items_and_targets(data) -> None:
    val = fashion_tagger.ImageDataset(data.root, split="val")
    rows = data.ds.split("val")
    assert len(val) == len(rows) > 0
    assert val.taxonomy == data.ds.taxonomy
    assert val.attribute_names == ["pattern=striped", "size=big", "size=small"]
    for i in range(len(val)):
        img, target = val[i]
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
        path, attrs = rows.labels[i], rows.table.column("attributes")[i].as_py()
        want = val.taxonomy.encode(path)
        assert target["levels"].tolist() == want and target["levels"].dtype == torch.int64
        assert val.taxonomy.decode(target["levels"].tolist()) == tuple(path)
        on = {val.attribute_names[j] for j in torch.nonzero(target["attributes"]).flatten()}
        assert on == set(attrs) and target["attributes"].dtype == torch.float32
    ragged = [t["levels"].tolist() for _, t in val if len(val.taxonomy.decode(t["levels"])) == 1]
    assert ragged and all(lv[1] == -1 for lv in ragged)  # depth-1 paths are masked below
    assert val[-1][1]["levels"].tolist() == val[len(val) - 1][1]["levels"].tolist()
    with pytest.raises(IndexError):
        val[len(val)]


def test_image_dataset_refuses_a_missing_split(data) -> None:
    with pytest.raises(DatasetError, match="no 'holdout' rows"):
        tds.ImageDataset(data.root, split="holdout")


def test_hdf5_dataset_matches_the_export(data) -> None:
    ds = fashion_tagger.HDF5Dataset(data.h5, split="val")
    assert len(ds) == len(data.ds.split("val"))
    img, target = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (24, 24)
    assert target["attributes"].shape == (0,) and ds.attribute_names == []
    paths = {ds.taxonomy.decode(ds[i][1]["levels"].tolist()) for i in range(len(ds))}
    sanitised = {tuple(p) for p in data.ds.split("val").labels}  # names are already safe
    assert paths == sanitised
    assert ds.taxonomy.level_names == ("shape", "colour")
    with pytest.raises(DatasetError, match="no 'holdout' split"):
        tds.HDF5Dataset(data.h5, split="holdout")


def test_shard_dataset_yields_every_sample_of_the_split(data) -> None:
    ds = fashion_tagger.ShardDataset(data.shards, split="val")
    assert len(ds.shards) > 1  # the test must exercise several shards
    items = list(ds)
    val = data.ds.split("val")
    assert len(items) == len(ds) == len(val)
    got = sorted(tuple(t["levels"].tolist()) for _, t in items)
    assert got == sorted(tuple(ds.taxonomy.encode(p)) for p in val.labels)
    assert ds.attribute_names == data.ds.attribute_names
    assert all(isinstance(x, Image.Image) for x, _ in items)


def _keys(ds: tds.ShardDataset, monkeypatch, worker: int, workers: int) -> list[str]:
    """Image hashes one worker of `ds` yields (the worker info faked in-process)."""
    info = SimpleNamespace(id=worker, num_workers=workers)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
    return [hashlib.sha1(x.tobytes()).hexdigest() for x, _ in ds]


@pytest.mark.parametrize("shuffle", [False, True])
def test_shards_split_per_rank_and_worker(data, monkeypatch, shuffle: bool) -> None:
    """2 ranks x 2 workers: each rank yields len() samples, ranks and workers never overlap
    while they have data of their own, and together they cover the split (minus the odd one)."""
    total = len(data.ds.split("train"))
    per_rank = []
    for rank in (0, 1):
        ds = tds.ShardDataset(
            data.shards, "train", shuffle=shuffle, buffer=4, rank=rank, world_size=2
        )
        ds.set_epoch(3)
        assert len(ds) == total // 2
        w0, w1 = _keys(ds, monkeypatch, 0, 2), _keys(ds, monkeypatch, 1, 2)
        assert len(w0) + len(w1) == len(ds)
        per_rank.append(w0 + w1)
    everything = per_rank[0] + per_rank[1]
    if len(set(everything)) == len(everything):  # no rank wrapped: exactly disjoint
        assert len(everything) == 2 * (total // 2)
    assert len(set(everything)) >= total - max(tds.ShardDataset(data.shards, "train").counts) - 1


def _simulate(counts: list[int], world: int, workers: int) -> list[list[int]]:
    """Sample ids each rank yields, following `plan_worker` and ShardDataset's stream."""
    starts = np.cumsum([0, *counts])
    out = []
    for rank in range(world):
        got = []
        for w in range(workers):
            shards, (rm, rr, wm, wr), cap = tds.plan_worker(
                counts, list(range(len(counts))), rank, world, w, workers
            )
            ids, k, m = [], 0, 0
            for s in shards:
                for sid in range(starts[s], starts[s + 1]):
                    if k % rm == rr:
                        if m % wm == wr:
                            ids.append(int(sid))
                        m += 1
                    k += 1
            assert cap == 0 or ids, "a worker with samples to yield must have some to read"
            got += [ids[i % len(ids)] for i in range(cap)] if ids else []
        out.append(got)
    return out


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(1, 9), min_size=1, max_size=12),
    world=st.integers(1, 4),
    workers=st.integers(1, 4),
)
def test_plan_gives_every_rank_the_same_share(counts, world, workers) -> None:
    total = sum(counts)
    ranks = _simulate(counts, world, workers)
    for got in ranks:
        assert len(got) == total // world
    seen = [set(g) for g in ranks]
    for a in range(world):
        for b in range(a + 1, world):
            assert not seen[a] & seen[b]  # ranks never read each other's samples
    if len(counts) < world:  # split by samples: exact, nothing repeated or lost but the rest
        assert sum(map(len, seen)) == world * (total // world)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(data, context: str) -> None:
    """Each dataset through a torchvision transform and 2 workers of each start method."""
    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{context} is not available here")
    made = [
        tds.ImageDataset(data.root, "val", TRANSFORM),
        tds.HDF5Dataset(data.h5, "val", TRANSFORM),
        tds.ShardDataset(data.shards, "val", TRANSFORM),
    ]
    for ds in made:
        ds[0] if not isinstance(ds, tds.ShardDataset) else next(iter(ds))  # opens in the parent
        loader = DataLoader(
            ds, batch_size=4, num_workers=2, multiprocessing_context=context, drop_last=False
        )
        batches = list(loader)
        n = sum(len(b[1]["levels"]) for b in batches)
        assert n == len(ds), type(ds).__name__
        x, target = batches[0]
        assert x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.float32
        assert target["levels"].shape[1] == 2


def test_image_dataset_over_object_storage(data, s3) -> None:
    """A dataset dir on the local S3 server: images are fetched on first use, per process."""
    url = f"{s3}/products"
    data.ds.copy_to(url).save()
    ds = tds.ImageDataset(url, split="val", transform=TRANSFORM)
    assert len(ds) == len(data.ds.split("val"))
    loader = DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="spawn")
    assert sum(len(x) for x, _ in loader) == len(ds)
    shard_url = f"{s3}/shards"
    import fsspec

    fsspec.filesystem("s3").put(f"{data.shards}/", shard_url.removeprefix("s3://"), recursive=True)
    shards = tds.ShardDataset(shard_url, "val")
    assert len(list(shards)) == len(shards) == len(ds)
    fsspec.filesystem("s3").put_file(str(data.h5), f"{s3.removeprefix('s3://')}/ds.h5")
    h5 = tds.HDF5Dataset(f"{s3}/ds.h5", "val", TRANSFORM)
    assert len(h5) == len(ds)
    loader = DataLoader(h5, batch_size=8, num_workers=2, multiprocessing_context="fork")
    assert sum(len(x) for x, _ in loader) == len(ds)


def test_shard_rank_comes_from_the_environment_at_use(data, monkeypatch) -> None:
    """Made before the launcher sets the rank, the dataset still splits by it when iterated."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ds = tds.ShardDataset(data.shards, "train")
    total = len(ds)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert ds.rank == 1 and len(ds) == total // 2 == len(list(ds))
    with pytest.raises(DatasetError, match="rank 3 is not in a world of 2"):
        tds.ShardDataset(data.shards, "train", rank=3)
