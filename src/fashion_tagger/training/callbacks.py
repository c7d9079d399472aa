"""Lightning callbacks of a training run: the per-epoch metrics log, the step timer and the
clock that makes a time budget end with a finished schedule."""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class EpochLog(pl.Callback):
    """Appends one row per epoch to logs/metrics.csv (the report side draws curves from it)."""

    def __init__(self, metrics_csv: Path, level_names: Sequence[str]) -> None:
        self.path = metrics_csv
        self.columns = (
            ["epoch", "step", "train_loss", "val_loss"]
            + [f"val_acc_{n}" for n in level_names]
            + ["val_acc_leaf"]
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for c in self.columns[2:]:
            key = "train_loss_epoch" if c == "train_loss" else c
            row[c] = float(m[key]) if key in m else ""
        path = self.path
        new = not path.is_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            if new:
                w.writeheader()
            w.writerow(row)


class StepTimer(pl.Callback):
    """Measures where training time goes: waiting for data vs running the step."""

    def __init__(self) -> None:
        self.data_s = self.step_s = self.cpu_s = 0.0
        self.images = 0
        self._cpu_start = 0.0
        self._t_end: float | None = None
        self._t_start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._t_end = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._t_start = time.perf_counter()
        self._cpu_start = time.process_time()
        if self._t_end is not None:
            self.data_s += self._t_start - self._t_end

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._t_end = time.perf_counter()
        self.step_s += self._t_end - self._t_start
        self.cpu_s += time.process_time() - self._cpu_start
        self.images += len(batch[0])

    def summary(self) -> dict[str, float]:
        total = self.data_s + self.step_s
        return {
            "images": self.images,
            "images_per_s": round(self.images / total, 1) if total else 0.0,
            "data_fraction": round(self.data_s / total, 4) if total else 0.0,
            "train_seconds": round(total, 1),
            # CPU time of the steps (all threads): images per CPU-second does not depend on
            # how busy a shared machine was
            "images_per_cpu_s": round(self.images / self.cpu_s, 1) if self.cpu_s else 0.0,
        }


class ClockSchedule(pl.Callback):
    """Makes a time budget end with a finished learning-rate schedule.

    The schedule is planned in steps, but a machine can run slower than planned (a shared or
    throttled CPU), and a run cut by the clock at a high learning rate is a poor model. With
    this callback the schedule follows whichever is further on, the share of steps done or the
    share of the budget spent: after each step the scheduler is stepped on to the clock's
    position when it lags behind. When the budget is spent, less the time of one validation,
    training stops (Lightning then runs that last validation), so the run ends on time with its
    learning rate annealed. Its state is checkpointed, so `--resume` keeps the clock.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.elapsed = 0.0  # seconds of training before this process (a resumed run)
        self.val_seconds = 0.0
        self._start = 0.0
        self._val_start = 0.0

    def spent(self) -> float:
        return self.elapsed + time.perf_counter() - self._start

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_seconds = time.perf_counter() - self._val_start

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        budget = max(self.seconds - self.val_seconds, 1e-6)
        share = float(trainer.strategy.broadcast(self.spent() / budget))
        total = int(trainer.estimated_stepping_batches)
        finished = share >= 1
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            if config.interval != "step":
                continue
            while sched.last_epoch < min(int(share * total), total):
                sched.step()
            # pushed on by the clock, the schedule can reach its end before the clock does;
            # Lightning's next step would then overrun it (OneCycleLR raises)
            finished = finished or sched.last_epoch >= total
        if finished:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, float]:
        return {"elapsed": self.spent() if self._start else self.elapsed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed = float(state_dict.get("elapsed", 0.0))
