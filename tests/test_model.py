"""Backbones, heads (one interface, registered by name), losses, weights loading."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_rundir import make_spec

from fashion_tagger.model import ModelError, save_model
from fashion_tagger.model.backbones import SimpleCNN, backbone_data_config
from fashion_tagger.model.heads import create_head, list_heads
from fashion_tagger.model.load import build_model, load_backbone_weights, load_model
from fashion_tagger.taxonomy import Taxonomy
from fashion_tagger.training.data import augment, augment_light, class_weights
from fashion_tagger.training.module import hierarchy_loss

RAGGED = Taxonomy.from_paths([("a", "x"), ("a", "y"), ("b",), ("c", "z"), ("c", "w")])


def test_registry() -> None:
    assert list_heads() == ["flat", "multi", "unified"]
    with pytest.raises(ModelError, match="unknown head"):
        create_head("nope", 8, RAGGED, 0)


@pytest.mark.parametrize("kind", ["unified", "multi", "flat"])
@pytest.mark.parametrize("attrs", [0, 3])
def test_head_interface(kind: str, attrs: int) -> None:
    torch.manual_seed(0)
    head = create_head(kind, 16, RAGGED, attrs, hidden=8, dropout=0.0).eval()
    out = head(torch.randn(5, 16))
    assert len(out) == RAGGED.depth + 1
    assert [o.shape for o in out[:-1]] == [(5, n) for n in RAGGED.sizes]
    assert out[-1].shape == (5, attrs)
    assert all(torch.isfinite(o).all() for o in out)


def test_flat_head_gives_marginals_of_leaves() -> None:
    torch.manual_seed(0)
    head = create_head("flat", 16, RAGGED, 0, hidden=0).eval()
    feats = torch.randn(4, 16)
    leaf_p = torch.softmax(head.leaves(feats), dim=1)
    out = head(feats)
    p0 = torch.softmax(out[0], dim=1)
    # level 0: a = leaves (a,x)+(a,y); b = leaf (b); c = (c,z)+(c,w); leaves in leaf_index_paths order
    groups = {}
    for j, path in enumerate(RAGGED.leaf_index_paths()):
        groups.setdefault(path[0], []).append(j)
    for node, leaves in groups.items():
        assert torch.allclose(p0[:, node], leaf_p[:, leaves].sum(1), atol=1e-5)


@pytest.mark.parametrize("messages", ["latent", "label"])
def test_unified_head_passes_messages_both_ways(messages: str) -> None:
    """Level 1's logits depend on level 0's branch (top-down) and vice versa (bottom-up)."""
    torch.manual_seed(0)
    head = create_head("unified", 8, RAGGED, 2, hidden=8, dropout=0.0, messages=messages).eval()
    x = torch.randn(3, 8)
    base = head(x)
    with torch.no_grad():
        head.branches[0][0].weight.add_(1.0)
    changed = head(x)
    assert not torch.allclose(base[1], changed[1])  # top-down
    with torch.no_grad():
        head.branches[0][0].weight.sub_(1.0)
        head.branches[1][0].weight.add_(1.0)
    changed = head(x)
    assert not torch.allclose(base[0], changed[0])  # bottom-up
    assert not torch.allclose(base[2], changed[2])  # attributes see the class probabilities


def test_unified_latent_messages_are_hidden_to_hidden_and_label_ones_go_through_classes() -> None:
    latent = create_head("unified", 8, RAGGED, 0, hidden=6, messages="latent")
    label = create_head("unified", 8, RAGGED, 0, hidden=6, messages="label")
    assert [m.weight.shape for m in latent.down_msgs] == [(6, 6)]
    assert [m.weight.shape for m in label.down_msgs] == [(6, RAGGED.sizes[0])]
    assert not hasattr(latent, "down_classifiers")
    with pytest.raises(ModelError, match="messages"):
        create_head("unified", 8, RAGGED, 0, messages="both")


def test_a_run_dir_from_before_the_messages_option_loads_as_label(tmp_path: Path) -> None:
    """model.json files written before `messages` existed name no messages: they were label."""
    spec = make_spec("unified")  # its head dict names no messages, as those model.json files
    assert spec.head.messages == "label"
    torch.manual_seed(0)
    model = build_model(spec).eval()
    assert model.head.messages == "label"
    save_model(tmp_path / "old", model, spec)
    loaded, _ = load_model(tmp_path / "old")  # strict load: every key of the old head is there
    x = torch.randn(2, 3, 32, 24)
    assert torch.allclose(model(x)[2], loaded(x)[2])


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


def test_class_weights_inverse_mean_one() -> None:
    levels = np.array([[0, 0], [0, 1], [0, 1], [1, -1]])
    w = class_weights(levels, (3, 2), "inverse")
    assert w[0].tolist() == pytest.approx([0.5, 1.5, 0.0])  # 1/3 and 1 over mean 2/3; unseen 0
    assert w[1].mean().item() == pytest.approx(1.0)
    assert class_weights(levels, (3, 2), "none")[0].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("kind", ["unified", "unified-latent", "multi", "flat"])
def test_probabilities_and_load_model_round_trip(tmp_path: Path, kind: str) -> None:
    spec = make_spec(kind.split("-")[0])
    if kind == "unified-latent":
        spec = replace(spec, head=replace(spec.head, messages="latent"))
    torch.manual_seed(1)
    model = build_model(spec).eval()
    x = torch.randn(2, 3, 32, 24)
    probs = model.probabilities(x)
    for p in probs[:-1]:
        assert torch.allclose(p.sum(1), torch.ones(2), atol=1e-5)
    assert ((probs[-1] >= 0) & (probs[-1] <= 1)).all()
    save_model(tmp_path / kind, model, spec)
    loaded, spec2 = load_model(tmp_path / kind)
    assert not loaded.training
    assert spec2.head == spec.head
    for a, b in zip(model(x), loaded(x), strict=True):
        assert torch.allclose(a, b)


def test_simple_cnn_features_and_default_input() -> None:
    net = SimpleCNN(1)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, net.num_features)
    cfg = backbone_data_config("simple-cnn", 1)
    assert cfg["size"] == (64, 64) and len(cfg["mean"]) == 1


def test_timm_backbone_and_its_data_config() -> None:
    cfg = backbone_data_config("resnet18")
    assert cfg["size"] == (224, 224) and cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    spec = make_spec()
    spec = type(spec)(
        **{**spec.__dict__, "backbone": {"name": "resnet10t", "pretrained": False, "in_chans": 3}}
    )
    out = build_model(spec).eval()(torch.randn(1, 3, 32, 24))
    assert len(out) == 4 and out[-1].shape == (1, 2)
    with pytest.raises(ModelError, match="unknown backbone"):
        backbone_data_config("not-a-model")


def test_local_weights_load_and_mismatch_is_clear(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = SimpleCNN(3)
    state = src.state_dict()
    torch.save({**state, "fc.weight": torch.zeros(2, 2)}, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        dst = SimpleCNN(3)
        load_backbone_weights(dst, tmp_path / name)
        assert torch.equal(dst.stem[0].weight, src.stem[0].weight)
    torch.save(SimpleCNN(1).state_dict(), tmp_path / "grey.pth")
    with pytest.raises(ModelError, match="another shape"):
        load_backbone_weights(SimpleCNN(3), tmp_path / "grey.pth")
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="missing"):
        load_backbone_weights(SimpleCNN(3), tmp_path / "bad.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelError, match="not a readable"):
        load_backbone_weights(SimpleCNN(3), tmp_path / "junk.safetensors")


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
