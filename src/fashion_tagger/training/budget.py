"""Time budgets: how many epochs, and what share of each, fit in a number of minutes.

A budgeted run should end with a finished learning-rate schedule, so it is sized up front from a
few timed steps on this machine; `ClockSchedule` (training.callbacks) then makes up the
difference while it runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import timedelta

import torch

from fashion_tagger.model.backbones import backbone_data_config, create_backbone
from fashion_tagger.training.config import TrainConfig, parse_max_time


def fit_to_budget(config: TrainConfig, n_train: int, n_val: int) -> TrainConfig:
    """`config` with as many epochs (and, below one epoch, as large a train fraction) as fit
    its `max_time` (`train --max-time` without `--epochs`, `quickstart`).

    Unchanged without a budget, for heads on cached features (seconds an epoch: their epochs
    are a choice, not a cost) and for distributed runs (each process would time its own steps
    and could plan other epochs than the rest, which would hang the run).
    """
    max_time = parse_max_time(config.max_time)
    if not max_time or config.model.freeze_backbone or not _one_process(config):
        return config
    minutes = timedelta(**max_time).total_seconds() / 60
    epochs, fraction = plan_budget(config, n_train, minutes, n_val)
    return replace(config, epochs=epochs, train_fraction=fraction)


def _one_process(config: TrainConfig) -> bool:
    """Whether the run trains in this process alone (no DDP over devices, nodes or torchrun)."""
    if config.num_nodes > 1 or str(config.strategy).startswith("ddp"):
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return False
    if config.devices == "auto":  # Lightning takes every GPU there is
        return config.accelerator == "cpu" or torch.cuda.device_count() <= 1
    return str(config.devices) == "1"


def plan_budget(
    config: TrainConfig, n_train: int, minutes: float, n_val: int | None = None, steps: int = 4
) -> tuple[int, float]:
    """(epochs, train_fraction) that fit in `minutes` on this machine, from a few timed steps.

    A time budget should end with a finished schedule (OneCycle/cosine reach their low learning
    rate), so budgeted runs size themselves up front; when not even one epoch fits, each epoch
    sees a fraction of the train batches. Give the run `max_time=minutes` as well: the plan
    comes from a few steps, and `ClockSchedule` makes up the difference when the machine turns
    out slower than they were. It plans 15 % more than those steps say fits: a plan that is too
    long is trimmed by the clock, one that is too short ends early and wastes the budget, and a
    run's first steps are often faster than its average (160 against 142 images/s measured).

    Epochs with the backbone frozen (`--freeze-backbone-epochs`, the pretrained recipe's first
    epoch) skip the backbone's backward pass and cost about half a full one, so they are timed
    on their own: a plan from full steps alone ended a 30-minute run after 21.
    """

    def n_frozen(epochs: int) -> int:  # as the run's own recipe will decide it
        m = replace(config, epochs=epochs).with_recipe().model
        return 0 if m.freeze_backbone else min(epochs, m.freeze_backbone_epochs or 0)

    recipe = config.with_recipe()  # time the step the run will take: its size and layout
    full = _seconds_per_image(recipe, frozen=False, steps=steps)
    frozen = _seconds_per_image(recipe, frozen=True, steps=steps) if n_frozen(1000) else full
    budget = minutes * 60 * 1.15
    train_s, frozen_s = max(n_train, 1) * full, max(n_train, 1) * frozen
    # validation runs on the whole val split every epoch: forward only, about a third of a step
    val_s = (n_train // 5 if n_val is None else n_val) * full / 3

    def cost(epochs: int, fraction: float = 1.0) -> float:
        f = n_frozen(epochs)
        return epochs * val_s + fraction * (f * frozen_s + (epochs - f) * train_s)

    epochs = max(1, round(budget / (train_s + val_s)))
    while cost(epochs) > budget + (train_s + val_s) / 2 and epochs > 1:
        epochs -= 1
    while cost(epochs + 1) <= budget + (train_s + val_s) / 2:  # the nearest whole number
        epochs += 1
    trainable = cost(epochs) - epochs * val_s
    fraction = (budget - epochs * val_s) / trainable
    return epochs, max(0.02, min(1.0, round(fraction, 3)))


def _seconds_per_image(config: TrainConfig, frozen: bool, steps: int) -> float:
    """Wall seconds per image of a training step of `config`'s backbone (fastest of `steps`,
    after the first), with a 100-class linear head; `frozen` runs the backbone without grad."""
    d = config.data
    size = d.image_size or backbone_data_config(config.model.backbone, d.channels)["size"]
    net, width = create_backbone(config.model.backbone, d.channels)
    head = torch.nn.Linear(width, 100)
    params = [*head.parameters(), *([] if frozen else net.parameters())]
    opt = torch.optim.AdamW(params)
    net.train(not frozen)
    x = torch.randn(config.batch_size, d.channels, *size)
    if config.model.channels_last:
        net, x = (
            net.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    y = torch.randint(0, 100, (config.batch_size,))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with torch.set_grad_enabled(not frozen):
            features = net(x)
        loss = torch.nn.functional.cross_entropy(head(features), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return min(times[1:] or times) / config.batch_size
