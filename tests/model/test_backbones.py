"""Backbones: simple-cnn and timm models, and the input each expects."""

from __future__ import annotations

import pytest
import torch
from spec_fixtures import make_spec

from fashion_tagger.model import ModelError
from fashion_tagger.model.backbones import SimpleCNN, backbone_data_config
from fashion_tagger.model.load import build_model


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
