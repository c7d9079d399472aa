"""The fine-tuning recipe (what pretrained weights switch on) and training that never crashes on a
valid dataset, whatever the batch size, epochs, train fraction and budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from run_fixtures import make_synthetic_dataset, one_thread

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.training.config import (
    PRETRAINED_BACKBONE_LR_SCALE,
    PRETRAINED_SIZE,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
)
from fashion_tagger.training.module import onecycle_warmup
from fashion_tagger.training.train import train


@pytest.mark.parametrize("total", [*range(2, 40), 97, 1000])
def test_onecycle_warmup_makes_every_schedule_length_steppable(total):
    # 4 steps at the old fixed 0.25 warm-up divided by zero inside OneCycleLR
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[0.1], total_steps=total, pct_start=onecycle_warmup(total)
    )
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(total - 1):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(0 < lr <= 0.1 + 1e-12 for lr in lrs)
    assert lrs[-1] < lrs[0]  # it ends below where it started: the cycle ran to its end
    if total >= 8:  # long enough for a step to land near the peak
        assert max(lrs) > 0.09


def test_recipe_for_pretrained_weights():
    cfg = TrainConfig(model=ModelConfig(weights="lite0"), epochs=5, batch_size=8).with_recipe()
    m = cfg.model
    assert m.backbone == "tf_efficientnet_lite0"  # the alias picks its architecture
    assert m.freeze_backbone_epochs == 1
    assert m.backbone_lr_scale == PRETRAINED_BACKBONE_LR_SCALE
    assert m.freeze_bn is True  # batches of 8 are too small for new statistics
    assert m.channels_last is True
    assert cfg.data.image_size == PRETRAINED_SIZE
    # the recipe is only a default: explicit choices win, and it is idempotent
    explicit = TrainConfig(
        data=DataConfig(image_size=(64, 64)),
        model=ModelConfig(weights="lite0", freeze_backbone_epochs=0, backbone_lr_scale=0.5),
        epochs=5,
    ).with_recipe()
    assert explicit.model.freeze_backbone_epochs == 0
    assert explicit.model.backbone_lr_scale == 0.5
    assert explicit.data.image_size == (64, 64)
    assert explicit.with_recipe() == explicit


def test_recipe_from_scratch_changes_nothing_that_matters():
    cfg = TrainConfig(model=ModelConfig(weights="none"), epochs=5).with_recipe()
    m = cfg.model
    assert m.weights is None and m.backbone == "simple-cnn"
    assert (m.freeze_backbone_epochs, m.backbone_lr_scale, m.freeze_bn) == (0, 1.0, False)
    assert m.channels_last is False
    assert cfg.data.image_size is None


def test_unknown_weights_name_the_choices():
    with pytest.raises(ConfigError, match=r"--weights nope: no such file.*lite0"):
        ModelConfig(weights="nope")


def test_pretrained_run_records_its_weights(tmp_path):
    """One epoch from the installed Lite0 weights: model.json names them and their sha256."""
    from fashion_tagger._io import sha256_file
    from fashion_tagger.model.weights import weights_source

    ds = make_synthetic_dataset(tmp_path / "ds", n=40)
    config = TrainConfig(
        data=DataConfig(image_size=(32, 32), workers=0),
        model=ModelConfig(weights="lite0", hidden=16),
        epochs=1,
        batch_size=16,
        progress=False,
    )
    with one_thread():
        run = train(ds, tmp_path / "run", config)
    saved = json.loads((run.path / "model.json").read_text())
    assert saved["weights"]["source"] == "lite0"
    assert saved["weights"]["sha256"] == sha256_file(weights_source("lite0").locate())
    assert run.spec.mean == (0.5, 0.5, 0.5)
    assert saved["input"]["interpolation"] == "bicubic"  # what timm's Lite0 was trained with
    assert run.spec.backbone["name"] == "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory) -> dict[int, Path]:
    """Synthetic dataset dirs from 3 to 20 images (each has train and val rows)."""
    out = {}
    for n in (3, 7, 20):
        root = make_synthetic_dataset(tmp_path_factory.mktemp(f"tiny{n}") / "ds", n=n, seed=n)
        out[n] = root
    return out


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    n=st.sampled_from([3, 7, 20]),
    batch_size=st.integers(1, 70),
    epochs=st.integers(1, 3),
    train_fraction=st.sampled_from([0.01, 0.3, 0.5, 1.0]),
    max_time=st.sampled_from([None, "0.05", "00:00:02"]),
    schedule=st.sampled_from(["onecycle", "cosine", "constant"]),
)
def test_training_never_crashes_on_a_valid_dataset(
    tiny_datasets, tmp_path_factory, n, batch_size, epochs, train_fraction, max_time, schedule
):
    """Any dataset with train and val rows trains, or refuses with a FashionTaggerError."""
    ds = tiny_datasets[n]
    config = TrainConfig(
        data=DataConfig(image_size=(16, 16), workers=0),
        model=ModelConfig(hidden=8),
        epochs=epochs,
        batch_size=batch_size,
        train_fraction=train_fraction,
        max_time=max_time,
        schedule=schedule,
        checkpoint_every=0,
        progress=False,
    )
    out = tmp_path_factory.mktemp("run")
    counts = {"train": 0, "val": 0, **Dataset.open(ds).info.counts["splits"]}
    # the only refusals allowed: no val image, or one image a step for batch-norm
    must_refuse = counts["val"] == 0 or min(batch_size, counts["train"]) < 2
    try:
        with one_thread():
            run = train(ds, out / "run", config)
    except FashionTaggerError as exc:  # a refusal says why in one line
        assert "\n" not in str(exc)
        assert must_refuse, str(exc)
        return
    assert not must_refuse
    assert run.weights.is_file()
    assert 0.0 <= run.config["metrics"]["val_acc_leaf"] <= 1.0
