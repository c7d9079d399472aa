"""Training data: class weights and the batch augmentations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fashion_tagger.training.data import augment, augment_light, class_weights


def test_class_weights_inverse_mean_one() -> None:
    levels = np.array([[0, 0], [0, 1], [0, 1], [1, -1]])
    w = class_weights(levels, (3, 2), "inverse")
    assert w[0].tolist() == pytest.approx([0.5, 1.5, 0.0])  # 1/3 and 1 over mean 2/3; unseen 0
    assert w[1].mean().item() == pytest.approx(1.0)
    assert class_weights(levels, (3, 2), "none")[0].tolist() == [1.0, 1.0, 1.0]


def test_augment_keeps_shape_and_range() -> None:
    x = torch.rand(8, 3, 20, 16)
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(x, y)


def test_augment_light_is_a_flip_and_a_small_shift_of_each_image() -> None:
    n, h, w, p = 64, 12, 10, 2
    x = torch.rand(n, 3, h, w)
    y = augment_light(x, torch.Generator().manual_seed(0), pixels=p)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (p,) * 4, mode="replicate")
    seen = set()
    for i in range(n):
        found = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(
                y[i],
                (padded[i].flip(2) if flip else padded[i])[:, dy : dy + h, dx : dx + w],
            )
        ]
        assert found, f"image {i} is not a flipped and shifted copy"
        seen.add(found[0])
    assert len({f for f, _, _ in seen}) == 2 and len(seen) > 10  # both flips, many shifts


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    """A small dataset with one unreadable val image, and its model spec at 16x16."""
    from run_fixtures import make_synthetic_dataset

    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.training.config import DataConfig, ModelConfig, TrainConfig
    from fashion_tagger.training.train import resolve_spec

    root = make_synthetic_dataset(tmp_path_factory.mktemp("split") / "ds", n=40, seed=2)
    ds = Dataset.open(root)
    val = ds.split("val")
    broken = val.table.column("image")[1].as_py()
    (root / broken).write_bytes(b"not an image")
    config = TrainConfig(
        data=DataConfig(image_size=(16, 16), workers=0),
        model=ModelConfig(backbone="simple-cnn", hidden=8),
    )
    return ds, resolve_spec(ds, config), broken


@pytest.mark.parametrize("workers", [0, 2])
def test_split_cache_is_a_memory_mapped_npy(split_data, tmp_path, workers) -> None:
    """Decoded once into an uncompressed .npy, mapped read-only (never loaded whole), the
    unreadable image compacted out; a second load maps the same file without decoding."""
    from fashion_tagger.model.preprocess import decode_for_model, to_uint8
    from fashion_tagger.training import data

    ds, spec, broken = split_data
    arrays, bad = data.load_split(ds, "val", spec, tmp_path, workers=workers, progress=False)
    part = ds.split("val").labelled()
    rels = part.table.column("image").to_pylist()
    assert bad == 1 and len(arrays) == len(rels) - 1
    assert isinstance(arrays.images, np.memmap) and not arrays.images.flags.writeable
    cache, ok_file = data.cache_paths("val", rels, spec, tmp_path)
    assert Path(arrays.images.filename) == cache.resolve()
    assert np.load(ok_file).tolist() == [r != broken for r in rels]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cache.name, ok_file.name])
    good = [r for r in rels if r != broken]
    for i in (0, len(good) - 1):
        want = to_uint8(decode_for_model(ds.root / good[i], spec), spec)
        assert np.array_equal(arrays.images[i], want)
    levels, _ = data.encode_targets(part, spec.taxonomy, spec.attribute_names)
    assert np.array_equal(arrays.levels, levels[[r != broken for r in rels]])

    def no_decode(*a, **k):
        raise AssertionError("the cache was decoded again")

    orig, data.decode_images = data.decode_images, no_decode
    try:
        again, bad2 = data.load_split(ds, "val", spec, tmp_path, workers=0, progress=False)
    finally:
        data.decode_images = orig
    assert bad2 == 1 and np.array_equal(again.images, arrays.images)
    batch = data.BatchDataset(again.images, again.levels, again.attributes)
    x, y, _ = batch[[0, 2]]
    assert x.shape == (2, *arrays.images.shape[1:]) and torch.equal(x[1], batch[2][0])
    assert torch.equal(y, torch.from_numpy(again.levels[[0, 2]]))


def test_ranks_that_do_not_write_leave_no_cache(split_data, tmp_path) -> None:
    from fashion_tagger.training import data

    ds, spec, _ = split_data
    arrays, bad = data.load_split(
        ds, "val", spec, tmp_path / "c", workers=0, progress=False, write_cache=False
    )
    assert bad == 1 and isinstance(arrays.images, np.memmap)
    assert not (tmp_path / "c").exists()  # the private decode was unlinked once mapped
    assert int(arrays.images[0].sum()) > 0


def test_a_damaged_cache_is_decoded_again(split_data, tmp_path) -> None:
    from fashion_tagger.training import data

    ds, spec, _ = split_data
    first, _ = data.load_split(ds, "val", spec, tmp_path, workers=0, progress=False)
    rels = ds.split("val").labelled().table.column("image").to_pylist()
    _, ok_file = data.cache_paths("val", rels, spec, tmp_path)
    want = np.array(first.images)
    del first
    np.save(ok_file, np.ones(3, dtype=bool))  # a mask that does not fit the split
    again, bad = data.load_split(ds, "val", spec, tmp_path, workers=0, progress=False)
    assert bad == 1 and np.array_equal(again.images, want)


def test_evaluation_batches_are_capped_by_their_size_not_training_ones() -> None:
    from fashion_tagger.training.data import BatchDataset, eval_batch_size, make_loader

    assert eval_batch_size(128, (3, 224, 224)) == 32
    assert eval_batch_size(128, (3, 64, 64)) == 128  # small images keep their batch
    assert eval_batch_size(128, (512,)) == 128  # features of a frozen backbone
    big = np.zeros((70, 3, 224, 224), dtype=np.uint8)
    ds = BatchDataset(big, np.zeros((70, 1), np.int64), np.zeros((70, 0), np.float32))
    val = make_loader(ds, 128, shuffle=False, seed=0, distributed=False)
    assert [len(b[0]) for b in val] == [32, 32, 6]
    train = make_loader(ds, 64, shuffle=True, seed=0, distributed=False)
    assert [len(b[0]) for b in train] == [64]
