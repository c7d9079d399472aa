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


def _read_state(path: Path) -> dict[str, Tensor]:
    """A state dict from safetensors, or a torch file loaded with `weights_only=True`."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise ModelError(f"{path} is not a readable weights file: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a local weights file into a backbone (offline `--weights`); keys must match.

    Classifier keys of the original model (e.g. timm's `fc.*`, `classifier.*`, `head.*`) that the
    featureless backbone lacks are ignored; any other mismatch is an error naming the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    state = _read_state(path)
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    # a classifier of the pretrained model is expected to be dropped
    extra = [
        k for k in unexpected if k.split(".")[0] not in ("fc", "classifier", "head", "last_linear")
    ]
    shapes = [k for k in state if k in own and state[k].shape != own[k].shape]
    if extra or missing or shapes:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({show(missing)})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({show(extra)})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape ({show(shapes)})")
        raise ModelError(
            f"{path} does not fit this backbone: keys {'; '.join(parts)}. "
            "Use the weights file of the same --backbone."
        )
    backbone.load_state_dict({k: v for k, v in state.items() if k in own})


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
