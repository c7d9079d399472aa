"""Time budgets: how many epochs, and what share of each, fit in a number of minutes.

A budgeted run should end with a finished learning-rate schedule, so it is sized up front from a
few timed steps on this machine; `ClockSchedule` (training.callbacks) then makes up the
difference while it runs.
"""

from __future__ import annotations

import time

import torch

from fashion_tagger.model.backbones import backbone_data_config, create_backbone
from fashion_tagger.training.config import TrainConfig


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
    """
    config = config.with_recipe()  # time the step the run will take: its size and layout
    d = config.data
    size = d.image_size or backbone_data_config(config.model.backbone, d.channels)["size"]
    net, width = create_backbone(config.model.backbone, d.channels)
    head = torch.nn.Linear(width, 100)
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()])
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
        loss = torch.nn.functional.cross_entropy(head(net(x)), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    per_image = min(times[1:] or times) / config.batch_size
    budget = minutes * 60 * 1.15
    train_s = max(n_train, 1) * per_image
    # validation runs on the whole val split every epoch: forward only, about a third of a step
    val_s = (n_train // 5 if n_val is None else n_val) * per_image / 3
    epochs = max(1, round(budget / (train_s + val_s)))
    fraction = (budget / epochs - val_s) / train_s
    return epochs, max(0.02, min(1.0, round(fraction, 3)))
