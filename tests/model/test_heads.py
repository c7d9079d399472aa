"""Heads: one interface, registered by name with the typed spec that validates their options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from spec_fixtures import make_spec

from fashion_tagger.errors import RunDirError
from fashion_tagger.model import HeadSpec, ModelError, head_kinds, head_spec, save_model
from fashion_tagger.model.heads import create_head, list_heads
from fashion_tagger.model.load import build_model, load_model
from fashion_tagger.taxonomy import Taxonomy

RAGGED = Taxonomy.from_paths([("a", "x"), ("a", "y"), ("b",), ("c", "z"), ("c", "w")])


def test_registry() -> None:
    assert list_heads() == ["flat", "multi", "unified"]
    with pytest.raises(ModelError, match="unknown head"):
        create_head("nope", 8, RAGGED, 0)


@pytest.mark.parametrize("kind", list_heads())
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


def test_every_head_has_a_spec_and_every_spec_a_head() -> None:
    assert list_heads() == head_kinds()


@pytest.mark.parametrize("kind", list_heads())
def test_a_head_refuses_an_option_it_does_not_have(kind: str) -> None:
    spec = head_spec(kind)
    assert HeadSpec.from_json(spec.to_json()) == spec  # one serialisation, round-tripped
    with pytest.raises(ModelError, match="has no option"):
        head_spec(kind, depth=3)
    with pytest.raises(RunDirError, match="no option"):
        make_spec(kind).from_json({**make_spec(kind).to_json(), "head": {"kind": kind, "x": 1}})
    with pytest.raises(ModelError, match="--dropout"):
        head_spec(kind, dropout=1.5)


@pytest.mark.parametrize("kind", list_heads())
def test_every_parameter_gets_a_gradient(kind: str) -> None:
    """DDP refuses a model with parameters no loss reaches; so do we."""
    tax = Taxonomy.from_paths([["a", "x"], ["a", "y"], ["b", "z"]], ["l0", "l1"])
    head = create_head(kind, 16, tax, 2, hidden=8)
    out = head(torch.randn(4, 16))
    sum(o.sum() for o in out).backward()
    unused = [n for n, p in head.named_parameters() if p.grad is None]
    assert unused == []


def test_unified_weights_with_the_old_unused_deepest_classifier_still_load() -> None:
    tax = Taxonomy.from_paths([["a", "x"], ["a", "y"], ["b", "z"]], ["l0", "l1"])
    head = create_head("unified", 16, tax, 2, hidden=8)
    state = head.state_dict()
    old = {
        **state,
        "down_classifiers.1.weight": torch.zeros(3, 8),
        "down_classifiers.1.bias": torch.zeros(3),
    }
    head.load_state_dict(old, strict=True)
    assert torch.equal(head.state_dict()["classifiers.0.weight"], state["classifiers.0.weight"])


def test_default_head_and_old_model_json() -> None:
    """`train` defaults to the measured best head (multi); a model.json written before `kind`
    was recorded still reads as the unified head those versions trained."""
    from fashion_tagger.model.spec import DEFAULT_HEAD
    from fashion_tagger.training.config import ModelConfig

    assert ModelConfig().head == DEFAULT_HEAD == "multi"
    assert HeadSpec.from_json({}).kind == "unified"
    assert HeadSpec.from_json({"kind": "multi"}).kind == "multi"
