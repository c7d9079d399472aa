"""Training data: class weights and the batch augmentations."""

from __future__ import annotations

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
