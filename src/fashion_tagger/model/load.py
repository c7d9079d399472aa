"""The whole model: backbone + head, built from a spec, loaded from a run dir.

`FashionModel.forward` gives logits (what training's losses take); `probabilities` gives
softmax per level and sigmoid attributes (what every consumer decodes, ONNX included).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from fashion_tagger.errors import RunDirError
from fashion_tagger.model.backbones import create_backbone
from fashion_tagger.model.heads import create_head
from fashion_tagger.model.rundir import RunDir
from fashion_tagger.model.spec import ModelError, ModelSpec


class FashionModel(nn.Module):
    """Backbone + head. `forward` gives logits; `probabilities` what consumers (ONNX) use."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.head(self.backbone(x))

    def probabilities(self, x: Tensor) -> tuple[Tensor, ...]:
        """Softmax per level, sigmoid for attributes."""
        out = self.forward(x)
        return (*(torch.softmax(z, dim=1) for z in out[:-1]), torch.sigmoid(out[-1]))


def build_model(spec: ModelSpec, pretrained: bool = False) -> FashionModel:
    """The model described by `spec`, with random weights (or timm's when `pretrained`)."""
    backbone, width = create_backbone(
        str(spec.backbone["name"]), in_chans=spec.channels, pretrained=pretrained
    )
    head = create_head(spec.head, width, spec.taxonomy, len(spec.attribute_names))
    return FashionModel(backbone, head)


def load_model(run_dir: str | Path | RunDir) -> tuple[FashionModel, ModelSpec]:
    """The trained model of a run dir in eval mode, weights from safetensors (never pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    try:
        model = build_model(run.spec)
    except ModelError as exc:
        raise RunDirError(
            f"{run.path}: model.json describes a model we cannot build: {exc}"
        ) from exc
    try:
        state = load_file(str(run.weights))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise RunDirError(
            f"{run.weights} does not fit the model of model.json: {str(exc)[:300]}"
        ) from exc
    return model.eval(), run.spec
