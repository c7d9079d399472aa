"""The LightningModule's loss: masked per-level cross-entropy, class weights, attributes."""

from __future__ import annotations

import torch

from fashion_tagger.training.module import hierarchy_loss


def test_loss_masks_missing_levels_and_weights_classes() -> None:
    logits = (torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 2))
    levels = torch.tensor([[0, 1], [1, -1], [2, 4], [0, -1]])
    attrs = torch.tensor([[1.0, 0.0]] * 4)
    total, per_level, attr = hierarchy_loss(logits, levels, attrs)
    expected1 = torch.nn.functional.cross_entropy(logits[1][[0, 2]], levels[[0, 2], 1])
    assert torch.allclose(per_level[1], expected1)
    assert torch.allclose(total, per_level[0] + per_level[1] + attr)
    w = [torch.tensor([1.0, 0.0, 0.0]), torch.ones(5)]
    _, weighted, _ = hierarchy_loss(logits, levels, attrs, w)
    only0 = torch.nn.functional.cross_entropy(logits[0][[0, 3]], levels[[0, 3], 0])
    assert torch.allclose(weighted[0], only0)
