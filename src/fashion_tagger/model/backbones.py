"""Backbones: images (N, C, H, W) to pooled features (N, F), one interface for all.

Any timm model created with `num_classes=0`, or our `simple-cnn` (a small residual CNN for tiny
greyscale or colour images, trained from scratch). `backbone_data_config` gives the input size
and normalisation a backbone expects (timm's `pretrained_cfg`), which the spec then records.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from fashion_tagger.model.spec import SIMPLE_CNN, ModelError

SIMPLE_CNN_SIZE = (64, 64)
"""Default input (H, W) of `simple-cnn`; fashion-product-images-small is 80x60, use 80x64."""


class _Block(nn.Module):
    """A ResNet basic block: two 3x3 conv-bn, a shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.short(x), inplace=True)


class SimpleCNN(nn.Module):
    """A small residual CNN for tiny images (28 to 96 px): fast on CPU, trained from scratch.

    A 3x3 stem at stride 2, then one basic block per stage at stride 2 after the first, global
    average pooling. About 1.2 M parameters at the default widths.
    """

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(_Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


def create_backbone(
    name: str, in_chans: int = 3, pretrained: bool = False
) -> tuple[nn.Module, int]:
    """A backbone by name and its feature width; `pretrained` downloads timm's weights."""
    if name == SIMPLE_CNN:
        if pretrained:
            raise ModelError("simple-cnn has no pretrained weights; drop --pretrained")
        net = SimpleCNN(in_chans)
        return net, net.num_features
    import timm

    if not timm.is_model(name):
        raise ModelError(
            f"unknown backbone {name!r}: use simple-cnn or a timm model name "
            f"(list them with: python -c 'import timm; print(timm.list_models())')"
        )
    try:
        net = timm.create_model(name, num_classes=0, pretrained=pretrained, in_chans=in_chans)
    except (RuntimeError, OSError, ValueError) as exc:
        hint = (
            " (--pretrained needs network access; use --weights FILE offline)" if pretrained else ""
        )
        raise ModelError(f"cannot create backbone {name!r}: {exc}{hint}") from exc
    # the width of what forward() returns: MobileNetV3 adds a conv head after num_features
    return net, int(getattr(net, "head_hidden_size", None) or net.num_features)


def backbone_data_config(name: str, in_chans: int = 3) -> dict[str, Any]:
    """Default input size / mean / std of a backbone (timm's pretrained_cfg for timm models)."""
    if name == SIMPLE_CNN:
        return {"size": SIMPLE_CNN_SIZE, "mean": (0.5,) * in_chans, "std": (0.25,) * in_chans}
    import timm

    if not timm.is_model(name):
        raise ModelError(f"unknown backbone {name!r}: use simple-cnn or a timm model name")
    cfg = timm.data.resolve_model_data_config(timm.get_pretrained_cfg(name).to_dict())
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if in_chans == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return {"size": tuple(cfg["input_size"][1:]), "mean": mean, "std": std}
