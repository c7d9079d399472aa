"""The model: a backbone (features) and a hierarchical head (logits per level + attributes).

Backbone and head are separate modules with one interface each, as in timm:
- a backbone maps images (N, C, H, W) to pooled features (N, F): any timm model created with
  `num_classes=0`, or our `simple-cnn` (a small residual CNN for tiny images);
- a head maps features to `(logits_level_0, ..., logits_level_{L-1}, attribute_logits)`.

Heads are registered by name (`list_heads()`): `unified` (Ferreira et al. 2018, generalised to any
number of levels), `multi` (independent heads per level) and `flat` (one softmax over leaves).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fashion_tagger.errors import FashionTaggerError, RunDirError
from fashion_tagger.rundir import ModelSpec, RunDir
from fashion_tagger.taxonomy import Taxonomy
from fashion_tagger.training.config import MESSAGES

SIMPLE_CNN = "simple-cnn"
SIMPLE_CNN_SIZE = (64, 64)
"""Default input (H, W) of `simple-cnn`; fashion-product-images-small is 80x60, use 80x64."""


class ModelError(FashionTaggerError):
    """A backbone, head or weights file cannot be used as asked."""


# -- backbones --------------------------------------------------------------------------------
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


# -- heads ------------------------------------------------------------------------------------
HeadFactory = Callable[..., nn.Module]
_HEADS: dict[str, HeadFactory] = {}


def register_head(name: str) -> Callable[[HeadFactory], HeadFactory]:
    """Register a head class under `name` (usable as `--head name`)."""

    def deco(cls: HeadFactory) -> HeadFactory:
        _HEADS[name] = cls
        return cls

    return deco


def list_heads() -> list[str]:
    return sorted(_HEADS)


def _branch(cin: int, hidden: int, dropout: float) -> nn.Module:
    """A dense branch: Linear + ReLU + Dropout (identity when hidden == 0)."""
    if hidden <= 0:
        return nn.Identity()
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))


@register_head("multi")
class MultiHead(nn.Module):
    """Independent heads per level and for attributes: the first baseline."""

    def __init__(
        self,
        in_features: int,
        taxonomy: Taxonomy,
        num_attributes: int,
        hidden: int = 1024,
        dropout: float = 0.3,
        **_: Any,
    ) -> None:
        super().__init__()
        width = hidden if hidden > 0 else in_features
        self.branches = nn.ModuleList(_branch(in_features, hidden, dropout) for _ in taxonomy.sizes)
        self.classifiers = nn.ModuleList(nn.Linear(width, n) for n in taxonomy.sizes)
        self.attr_branch = _branch(in_features, hidden, dropout)
        self.attr_classifier = nn.Linear(width, num_attributes)

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        levels = [c(b(features)) for b, c in zip(self.branches, self.classifiers, strict=True)]
        return (*levels, self.attr_classifier(self.attr_branch(features)))


@register_head("flat")
class FlatHead(nn.Module):
    """One softmax over the leaves: the second baseline.

    Level "logits" are the log of the marginal probability of each node (the sum of its leaves'
    probabilities), so that softmax per level gives back those marginals. A level where some
    leaves are shallower is renormalised over the deeper ones.
    """

    def __init__(
        self,
        in_features: int,
        taxonomy: Taxonomy,
        num_attributes: int,
        hidden: int = 1024,
        dropout: float = 0.3,
        **_: Any,
    ) -> None:
        super().__init__()
        width = hidden if hidden > 0 else in_features
        paths = taxonomy.leaf_index_paths()
        self.branch = _branch(in_features, hidden, dropout)
        self.leaves = nn.Linear(width, len(paths))
        for level, n in enumerate(taxonomy.sizes):
            m = torch.zeros(len(paths), n)
            for j, p in enumerate(paths):
                if level < len(p):
                    m[j, p[level]] = 1.0
            self.register_buffer(f"membership_{level}", m, persistent=False)
        self.depth = taxonomy.depth
        self.attr_branch = _branch(in_features, hidden, dropout)
        self.attr_classifier = nn.Linear(width, num_attributes)

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        leaf_p = torch.softmax(self.leaves(self.branch(features)), dim=1)
        levels = [
            torch.log(leaf_p @ getattr(self, f"membership_{lvl}") + 1e-12)
            for lvl in range(self.depth)
        ]
        return (*levels, self.attr_classifier(self.attr_branch(features)))


@register_head("unified")
class UnifiedHead(nn.Module):
    """The structured-output head of Ferreira et al. (2018, arXiv:1806.09445), generalised.

    One dense branch per level and one for attributes on the pooled features; then message
    passing over the levels, top-down (level l receives from level l-1, already refined) and
    back up (level l receives from level l+1, refined on the way up), each step a residual
    `relu(own + message)`. Final level logits come from the refined representations; attribute
    logits from their branch plus a projection of the class probabilities of every level (the
    leaf level, and the shallower levels for paths that stop early).

    `messages` says what a message is made of: see `MESSAGES`. With "label", the top-down
    message is a projection of an auxiliary (unsupervised) classifier's probabilities at the
    parent level and the bottom-up one a projection of the child's final probabilities.
    """

    def __init__(
        self,
        in_features: int,
        taxonomy: Taxonomy,
        num_attributes: int,
        hidden: int = 1024,
        dropout: float = 0.3,
        messages: str = "label",
        **_: Any,
    ) -> None:
        super().__init__()
        if messages not in MESSAGES:
            raise ModelError(f"unknown messages {messages!r}; choose one of {', '.join(MESSAGES)}")
        self.messages = messages
        hidden = hidden if hidden > 0 else in_features
        sizes = taxonomy.sizes
        self.branches = nn.ModuleList(_branch(in_features, hidden, dropout) for _ in sizes)
        if messages == "label":
            self.down_classifiers = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
            self.down_msgs = nn.ModuleList(nn.Linear(n, hidden) for n in sizes[:-1])
            self.up_msgs = nn.ModuleList(nn.Linear(n, hidden) for n in sizes[1:])
        else:
            self.down_msgs = nn.ModuleList(nn.Linear(hidden, hidden) for _ in sizes[:-1])
            self.up_msgs = nn.ModuleList(nn.Linear(hidden, hidden) for _ in sizes[1:])
        self.classifiers = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.attr_branch = _branch(in_features, hidden, dropout)
        self.attr_classifier = nn.Linear(hidden, num_attributes)
        self.attr_msg = nn.Linear(sum(sizes), num_attributes)

    def _down(self, lvl: int, parent: Tensor) -> Tensor:
        """The message from level lvl-1's refined representation to level lvl."""
        if self.messages == "label":
            parent = torch.softmax(self.down_classifiers[lvl - 1](parent), dim=1)
        return self.down_msgs[lvl - 1](parent)

    def _up(self, lvl: int, child: Tensor, child_logits: Tensor) -> Tensor:
        """The message from level lvl+1 to level lvl."""
        src = torch.softmax(child_logits, dim=1) if self.messages == "label" else child
        return self.up_msgs[lvl](src)

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        depth = len(self.branches)
        down = [b(features) for b in self.branches]
        for lvl in range(1, depth):
            down[lvl] = F.relu(down[lvl] + self._down(lvl, down[lvl - 1]))
        up = list(down)
        logits: list[Tensor] = [torch.empty(0)] * depth
        for lvl in reversed(range(depth)):
            if lvl < depth - 1:
                up[lvl] = F.relu(down[lvl] + self._up(lvl, up[lvl + 1], logits[lvl + 1]))
            logits[lvl] = self.classifiers[lvl](up[lvl])
        probs = torch.cat([torch.softmax(z, dim=1) for z in logits], dim=1)
        attrs = self.attr_classifier(self.attr_branch(features)) + self.attr_msg(probs)
        return (*logits, attrs)


def create_head(
    kind: str, in_features: int, taxonomy: Taxonomy, num_attributes: int, **opts: Any
) -> nn.Module:
    if kind not in _HEADS:
        raise ModelError(f"unknown head {kind!r}; choose one of {', '.join(list_heads())}")
    with warnings.catch_warnings():  # no attributes: a 0-output layer is fine, not worth a warning
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        return _HEADS[kind](in_features, taxonomy, num_attributes, **opts)


# -- the whole model --------------------------------------------------------------------------
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


def _head_opts(head: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in head.items() if k != "kind"}


def build_model(spec: ModelSpec, pretrained: bool = False) -> FashionModel:
    """The model described by `spec`, with random weights (or timm's when `pretrained`)."""
    backbone, width = create_backbone(
        str(spec.backbone["name"]), in_chans=spec.channels, pretrained=pretrained
    )
    head = create_head(
        str(spec.head.get("kind", "unified")),
        width,
        spec.taxonomy,
        len(spec.attribute_names),
        **_head_opts(spec.head),
    )
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
        state = load_file(str(run.weights_path))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise RunDirError(
            f"{run.weights_path} does not fit the model of model.json: {str(exc)[:300]}"
        ) from exc
    return model.eval(), run.spec
