"""`plan_budget`: the arithmetic that turns minutes into epochs, with frozen epochs costed apart."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashion_tagger.training import budget
from fashion_tagger.training.config import ModelConfig, TrainConfig

FULL, FROZEN = 0.02, 0.008  # seconds per image of a full and a frozen step


@pytest.fixture
def fake_steps(monkeypatch):
    """Step times without running a backbone: full steps FULL, frozen steps FROZEN s/image."""
    calls = []

    def seconds(config, frozen, steps):
        calls.append(frozen)
        return FROZEN if frozen else FULL

    monkeypatch.setattr(budget, "_seconds_per_image", seconds)
    return calls


def _cost(config: TrainConfig, epochs: int, fraction: float, n_train: int, n_val: int) -> float:
    recipe = TrainConfig(model=config.model, epochs=epochs).with_recipe().model
    frozen = 0 if recipe.freeze_backbone else min(epochs, recipe.freeze_backbone_epochs or 0)
    train = fraction * n_train * (frozen * FROZEN + (epochs - frozen) * FULL)
    return train + epochs * n_val * FULL / 3


def test_scratch_plan_uses_full_steps_only(fake_steps):
    # 1,000 images at 0.02 s = 20 s an epoch, plus 200 val images at a third: 21.33 s an epoch
    epochs, fraction = budget.plan_budget(TrainConfig(), 1000, 1.0, 200)
    assert fake_steps == [False]
    assert epochs == round(60 * 1.15 / (20 + 200 * FULL / 3))
    assert fraction == 1.0


def test_frozen_first_epoch_buys_more_epochs(fake_steps):
    pretrained = TrainConfig(model=ModelConfig(backbone="tf_efficientnet_lite0", weights="lite0"))
    scratch_epochs, _ = budget.plan_budget(TrainConfig(), 1000, 2.0, 200)
    epochs, fraction = budget.plan_budget(pretrained, 1000, 2.0, 200)
    assert fake_steps == [False, False, True]
    # the frozen epoch costs 8 s instead of 20: the 12 s saved buy about half an epoch more
    assert epochs == scratch_epochs + 1
    assert abs(_cost(pretrained, epochs, fraction, 1000, 200) - 120 * 1.15) <= 21.4 / 2


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n_train=st.integers(1, 50_000),
    n_val=st.integers(0, 10_000),
    minutes=st.floats(0.05, 120),
    pretrained=st.booleans(),
    freeze=st.one_of(st.none(), st.integers(0, 5)),
)
def test_plans_fit_their_budget(monkeypatch, n_train, n_val, minutes, pretrained, freeze):
    monkeypatch.setattr(
        budget, "_seconds_per_image", lambda c, frozen, steps: FROZEN if frozen else FULL
    )
    model = ModelConfig(
        backbone="tf_efficientnet_lite0" if pretrained else "simple-cnn",
        weights="lite0" if pretrained else None,
        freeze_backbone_epochs=freeze,
    )
    config = TrainConfig(model=model)
    epochs, fraction = budget.plan_budget(config, n_train, minutes, n_val)
    assert epochs >= 1 and 0.02 <= fraction <= 1.0
    spent, target = _cost(config, epochs, fraction, n_train, n_val), minutes * 60 * 1.15
    epoch = n_train * FULL + n_val * FULL / 3
    if fraction < 1.0 and fraction > 0.02:  # part epochs: the plan fills the budget, up to
        # the fraction's rounding to 3 decimals
        per_fraction = _cost(config, epochs, 1.0, n_train, n_val) - _cost(
            config, epochs, 0.0, n_train, n_val
        )
        assert abs(spent - target) <= 0.0005 * per_fraction + 1e-9
    elif fraction == 1.0:  # whole epochs: the nearest whole number of them
        assert abs(spent - target) <= epoch / 2 + 1e-6 or epochs == 1


def test_cli_max_time_without_epochs_trains_the_planned_epochs(fake_steps, tmp_path):
    """`train --max-time M` sizes its epochs to M on this machine; `--epochs` still wins."""
    from run_fixtures import make_synthetic_dataset, one_thread
    from typer.testing import CliRunner

    from fashion_tagger.cli import app
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.model.rundir import RunDir

    ds = make_synthetic_dataset(tmp_path / "ds", n=40)
    counts = Dataset.open(ds).labelled().split_counts()
    common = ["--image-size", "24x20", "--hidden", "8", "--batch-size", "8", "--workers", "0",
              "--no-progress", "--max-time", "0.05"]  # fmt: skip
    planned = budget.plan_budget(TrainConfig(batch_size=8), counts["train"], 0.05, counts["val"])
    assert planned[0] not in (1, TrainConfig().epochs)  # the plan is what decides, not a default
    with one_thread():
        res = CliRunner().invoke(app, ["train", str(ds), "--out", str(tmp_path / "a"), *common])
        fixed = ["train", str(ds), "--out", str(tmp_path / "b"), "--epochs", "1", *common]
        res_fixed = CliRunner().invoke(app, fixed)
    assert res.exit_code == 0 and res_fixed.exit_code == 0, res.output + res_fixed.output
    assert f"{planned[0]} epochs" in res.stdout
    metrics = RunDir.open(tmp_path / "a").config["metrics"]
    ece = f"{metrics['val_ece_before']:.3f} -> {metrics['val_ece_after']:.3f}"
    assert f"confidence ECE on val: {ece}" in res.stdout
    training = RunDir.open(tmp_path / "a").config["training"]
    assert (training["epochs"], training["train_fraction"]) == planned
    assert RunDir.open(tmp_path / "b").config["training"]["epochs"] == 1
