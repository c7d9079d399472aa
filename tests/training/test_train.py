"""train(): the run dir it writes, resume after a crash mid-epoch, frozen-backbone training,
the LR finder, the CLI verb and config validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from run_fixtures import make_synthetic_dataset, one_thread, shared_tiny_run
from safetensors.torch import load_file, save_file

from fashion_tagger.errors import RunDirError
from fashion_tagger.model.rundir import RunDir
from fashion_tagger.training.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    parse_max_time,
)
from fashion_tagger.training.train import train


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("ds") / "small", n=100, seed=1, ragged=True
    )


def quick(**kw) -> TrainConfig:
    model = kw.pop("model", ModelConfig(backbone="simple-cnn", head="unified", hidden=16))
    data = kw.pop("data", DataConfig(image_size=(24, 24), workers=0))
    return TrainConfig(
        data=data,
        model=model,
        **{"epochs": 1, "batch_size": 16, "lr": 3e-3, "progress": False, **kw},
    )


def test_run_dir_contents(tmp_path: Path) -> None:
    run_dir, _ = shared_tiny_run()
    run = RunDir.open(run_dir)
    for f in (
        "model.json",
        "model.safetensors",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "curves.png",
        "logs/metrics.csv",
    ):
        assert (run_dir / f).is_file(), f
    assert list((run_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "epoch",
        "step",
        "train_loss",
        "val_loss",
        "val_acc_shape",
        "val_acc_colour",
        "val_acc_leaf",
    ]
    assert len(rows) == 8 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    cfg = run.config
    assert cfg["training"]["model"]["head"] == "unified" and cfg["training"]["epochs"] == 8
    assert run.spec.head.messages == "label"
    assert cfg["training"]["throughput"]["images_per_s"] > 0
    assert 0 <= cfg["training"]["throughput"]["data_fraction"] < 1
    assert cfg["data"]["counts"]["train"] > 100 and len(cfg["data"]["fingerprint"]) == 16
    assert cfg["metrics"]["val_acc_leaf"] > 0.4  # chance is 0.2
    assert run.spec.attribute_names == ["pattern=striped", "size=big", "size=small"]
    assert not (run_dir / "cache").exists()  # the default decode cache goes once the run is done


class Crash(pl.Callback):
    """Kills training at a given step, as a power cut would (after the step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_after_crash_mid_epoch_finishes_the_planned_epochs(
    small: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    config = quick(epochs=3, checkpoint_every=2)
    with one_thread():
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(
                small, run_dir, config, callbacks=[Crash(step=4)]
            )  # 3 steps per epoch: mid epoch 2
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (
            run_dir / "model.json"
        ).exists()
        with pytest.raises(RunDirError, match="--resume"):
            train(small, run_dir, config)  # a new run must not overwrite it
        run = train(None, run_dir, resume=True)
    assert run.config["training"]["epochs_run"] == 3
    steps_per_epoch = run.config["data"]["counts"]["train"] // 16  # drop_last
    assert run.config["training"]["global_step"] == 3 * steps_per_epoch
    with open(run_dir / "logs" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]
    assert RunDir.open(run_dir).spec.taxonomy.depth == 2


class LastLR(pl.Callback):
    def on_train_end(self, trainer, module) -> None:
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.step = trainer.global_step
        self.total = trainer.estimated_stepping_batches


def test_a_time_budget_ends_on_time_with_the_schedule_finished(small: Path, tmp_path: Path) -> None:
    # 500 planned epochs cannot fit in 3 seconds: the clock moves the OneCycle schedule on and
    # stops the run, which still validates once more and saves its model
    last = LastLR()
    with one_thread():
        run = train(
            small, tmp_path / "run", quick(epochs=500, max_time="0:00:03"), callbacks=[last]
        )
    t = run.config["training"]
    assert t["seconds"] < 3 + 10  # the budget, plus one validation and Lightning's teardown
    assert last.step < last.total / 10  # stopped by the clock, far from the planned steps
    assert last.lr < 3e-3 * 1e-5  # annealed to OneCycle's floor (peak / 2.5e5): finished
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["val_acc_leaf"] != "" and int(rows[-1]["step"]) == last.step


def test_a_schedule_the_clock_pushed_to_its_end_stops_the_run(
    small: Path, tmp_path: Path, monkeypatch
) -> None:
    # the clock says 99.9 % of the budget is spent, forever: it moves the schedule to its last
    # step, and the run must stop there, not step the scheduler past its end (OneCycleLR raises)
    from fashion_tagger.training.callbacks import ClockSchedule

    monkeypatch.setattr(ClockSchedule, "spent", lambda self: 0.999 * self.seconds)
    last = LastLR()
    with one_thread():
        train(small, tmp_path / "run", quick(epochs=500, max_time="10"), callbacks=[last])
    assert last.step < 20 and last.lr < 3e-3 * 1e-5


def test_resume_needs_a_started_run(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="cannot resume"):
        train(None, tmp_path, resume=True)


def test_frozen_backbone_trains_heads_on_cached_features_with_lr_finder(
    small: Path, tmp_path: Path
) -> None:
    tiny_run, _ = shared_tiny_run()
    backbone = {
        k[9:]: v
        for k, v in load_file(str(tiny_run / "model.safetensors")).items()
        if k.startswith("backbone.")
    }
    weights = tmp_path / "backbone.safetensors"
    save_file(backbone, str(weights))
    config = quick(
        epochs=2,
        lr="auto",
        model=ModelConfig(
            backbone="simple-cnn",
            head="multi",
            hidden=16,
            weights=str(weights),
            freeze_backbone=True,
        ),
        data=DataConfig(image_size=(32, 32), workers=0, cache_dir=str(tmp_path / "cache")),
    )
    with one_thread():
        run = train(small, tmp_path / "run", config)
    saved = load_file(str(run.weights))
    for k, v in backbone.items():
        assert torch.equal(saved[f"backbone.{k}"], v), k
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 2
    assert (run.path / "lr_find.png").is_file() and run.config["training"]["lr_used"] > 0
    assert run.config["backbone"]["pretrained"] is True
    # 100 rows, about 20 in val: too few to fit a temperature, and model.json says so
    assert run.spec.temperatures == (1.0, 1.0)
    assert "T kept at 1.0" in run.config["temperature_fit"]["note"]


def test_train_ends_by_fitting_temperatures_on_val(tmp_path: Path) -> None:
    """The finalise step fits one T per level on val, on the very probabilities predict sees:
    `calibrate` on the same split (through the Tagger, on the images) finds the same T."""
    from fashion_tagger.evaluation import calibrate

    data = make_synthetic_dataset(tmp_path / "ds", n=420, seed=3)
    with one_thread():
        run = train(data, tmp_path / "run", quick(epochs=4))
    fit = run.config["temperature_fit"]
    assert fit["split"] == "val" and fit["note"] == "" and min(fit["rows"].values()) >= 50
    temps = dict(zip(run.spec.level_names, run.spec.temperatures, strict=True))
    assert run.config["temperature"] == temps and fit["temperature"] == pytest.approx(
        temps, abs=1e-6
    )  # rounded to 6 decimals
    assert all(t != pytest.approx(1.0, abs=0.01) for t in temps.values())
    metrics = run.config["metrics"]
    assert metrics["val_ece_before"] == fit["ece_path"]["before"] > 0
    assert metrics["val_ece_after"] == fit["ece_path"]["after"]
    for level in temps:
        assert fit["nll"]["after"][level] < fit["nll"]["before"][level]
    again = calibrate(run.path, data, "val", progress=False)["temperature"]
    assert again["temperature"] == pytest.approx(temps, rel=1e-3)
    assert again["ece_path"]["after"] == pytest.approx(fit["ece_path"]["after"], abs=1e-3)


def test_cli_train_json_and_existing_run_error(small: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fashion_tagger.cli import app

    args = ["train", str(small), "--out", str(tmp_path / "r"), "--epochs", "1", "--image-size", "24x20", "--hidden", "8",
            "--head", "flat", "--batch-size", "32", "--augment", "--workers", "0", "--no-progress", "--json"]  # fmt: skip
    with one_thread():
        res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert out["run_dir"] == str(tmp_path / "r") and "val_acc_leaf" in out["metrics"]
    spec = RunDir.open(tmp_path / "r").spec
    assert spec.input_size == (24, 20) and spec.head.kind == "flat"
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, RunDirError)


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda: TrainConfig(epochs=0), "--epochs"),
        (lambda: TrainConfig(lr="fast"), "--lr"),
        (lambda: TrainConfig(schedule="linear"), "--schedule"),
        (lambda: ModelConfig(head="tree"), "--head"),
        (lambda: ModelConfig(head="unified", messages="both"), "--messages"),  # its option
        (lambda: ModelConfig(weights="/no/such/file"), "--weights"),
        (lambda: ModelConfig(pretrained=True, weights=__file__), "--pretrained"),
        (lambda: DataConfig(image_size=(2, 2)), "--image-size"),
        (lambda: DataConfig(class_weights="balanced"), "--class-weights"),
        (lambda: DataConfig(augment="heavy"), "augment"),
        (lambda: TrainConfig(max_time="soon"), "--max-time"),
        (
            lambda: TrainConfig(
                data=DataConfig(augment=True), model=ModelConfig(freeze_backbone=True)
            ),
            "--freeze-backbone",
        ),
    ],
)
def test_config_errors_name_the_flag(make, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        make()


def test_config_round_trip_and_max_time() -> None:
    cfg = TrainConfig(data=DataConfig(image_size=(80, 64)), lr="auto", max_time="00:10:00")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert parse_max_time("90") == {"days": 0, "hours": 1, "minutes": 30, "seconds": 0}
    assert parse_max_time("0:00:30") == {"days": 0, "hours": 0, "minutes": 0, "seconds": 30}
    # run dirs from before the augmentation modes said True / False
    assert (
        DataConfig(augment=True).augment == "full" and DataConfig(augment=False).augment == "none"
    )
    # and from before the unified head's messages were an option: they built label messages
    old = cfg.to_dict()
    del old["model"]["messages"]
    assert TrainConfig.from_dict(old).model.messages == "label"
    latent = TrainConfig(model=ModelConfig(messages="latent"))
    assert TrainConfig.from_dict(json.loads(json.dumps(latent.to_dict()))) == latent


def test_detect_kind(tmp_path: Path) -> None:
    import zipfile

    from fashion_tagger.errors import FashionTaggerError
    from fashion_tagger.quickstart import detect_kind

    (tmp_path / "tree" / "a").mkdir(parents=True)
    assert detect_kind(tmp_path / "tree") == "folders"
    (tmp_path / "tree" / "styles.csv").write_text("id\n")
    assert detect_kind(tmp_path / "tree") == "kaggle-products"
    (tmp_path / "f.csv").write_text("label,pixel1\n")
    assert detect_kind(tmp_path / "f.csv") == "fashion-mnist"
    with zipfile.ZipFile(tmp_path / "k.zip", "w") as z:
        z.writestr("x/styles.csv", "id\n")
    assert detect_kind(tmp_path / "k.zip") == "kaggle-products"
    with pytest.raises(FashionTaggerError, match="does not exist"):
        detect_kind(tmp_path / "nope")


def test_quickstart_on_a_folder_tree(tmp_path: Path) -> None:
    import numpy as np
    from run_fixtures import PATHS, draw_item

    from fashion_tagger.quickstart import quickstart

    rng = np.random.default_rng(0)
    for i in range(60):
        path = PATHS[i % len(PATHS)]
        folder = tmp_path / "photos" / path[0] / path[1]
        folder.mkdir(parents=True, exist_ok=True)
        draw_item(path, bool(i % 2), False, rng).save(folder / f"{i}.png")
    with one_thread():
        s = quickstart(
            tmp_path / "photos", tmp_path / "qs", minutes=0.05, workers=1, progress=False
        )
    assert s["kind"] == "folders" and s["split"] == "test"
    # photos get the installed pretrained weights, named with their sha256
    assert s["weights"] == "lite0" and s["backbone"] == "tf_efficientnet_lite0"
    assert len(s["weights_sha256"]) == 64
    for key in ("run_dir", "metrics", "report", "predictions"):
        assert Path(s[key]).exists(), key
    rows = [json.loads(line) for line in Path(s["predictions"]).read_text().splitlines()]
    assert rows and all(r["path"] for r in rows)
    assert len(s["accuracy"]) == 2 and all(0 <= v <= 1 for v in s["accuracy"].values())


def test_a_best_checkpoint_that_does_not_load_is_an_error(tmp_path: Path) -> None:
    """model.json's metrics are the best epoch's: saving other weights under them is refused."""
    from fashion_tagger.training.train import _load_best

    bad = tmp_path / "best.ckpt"
    torch.save({"not_a_state_dict": 1}, bad)
    with pytest.raises(RunDirError, match="best checkpoint"):
        _load_best(torch.nn.Linear(2, 2), str(bad))
    _load_best(torch.nn.Linear(2, 2), "")  # no validation ran: nothing to load, no error


def test_lightning_chatter_stays_off_the_terminal(small: Path, tmp_path: Path, capfd) -> None:
    """Lightning's tips, accelerator lines, batch counting and end-of-fit line, and the
    warnings raised inside it, never reach the user's terminal; train's own report does."""
    import logging

    train(small, tmp_path / "run", quick())
    out, err = capfd.readouterr()
    for noise in ("Tip:", "litlogger", "GPU available", "TPU available", "LeafSpec",
                  "Loading `train_dataloader`", "`Trainer.fit` stopped"):  # fmt: skip
        assert noise not in out + err, noise
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    shown = logging.LogRecord(log.name, logging.WARNING, "", 0, "a real problem", None, None)
    assert all(f.filter(shown) for f in log.filters)  # other messages still pass
