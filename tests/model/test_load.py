"""The whole model: built from a spec, saved to and loaded from a run dir; backbone weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from spec_fixtures import make_spec

from fashion_tagger.model import ModelError, save_model
from fashion_tagger.model.backbones import SimpleCNN
from fashion_tagger.model.heads import list_heads
from fashion_tagger.model.load import build_model, load_model
from fashion_tagger.model.weights import load_backbone_weights


@pytest.mark.parametrize("kind", [*list_heads(), "unified-latent"])
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
