"""The LightningModule: wires the model to its losses, metrics, optimiser and schedule.

No architecture lives here (that is `fashion_tagger.model`) and no data handling (that is
`data.py`): a step
turns uint8 pixels into normalised floats (augmenting train batches), runs the model, and sums
a masked, class-weighted cross-entropy per level and a BCE over attributes.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.nn import functional as F

from fashion_tagger.model.decode import LeafTable
from fashion_tagger.model.load import FashionModel
from fashion_tagger.model.preprocess import normalize_tensor
from fashion_tagger.model.spec import ModelSpec
from fashion_tagger.training.config import TrainConfig
from fashion_tagger.training.data import AUGMENTATIONS


def hierarchy_loss(
    outputs: tuple[Tensor, ...],
    levels: Tensor,
    attributes: Tensor,
    weights: list[Tensor] | None = None,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, list[Tensor], Tensor]:
    """Sum of per-level cross-entropies (targets -1 ignored) and the attributes' BCE.

    Returns (total, per-level losses, attribute loss). A level with no valid target in the batch
    contributes 0.
    """
    per_level = []
    for lvl, logits in enumerate(outputs[:-1]):
        y = levels[:, lvl]
        if bool((y >= 0).any()):
            w = None if weights is None else weights[lvl].to(logits.device)
            per_level.append(
                F.cross_entropy(
                    logits.float(), y, weight=w, ignore_index=-1, label_smoothing=label_smoothing
                )
            )
        else:
            per_level.append(logits.sum() * 0.0)
    attr_logits = outputs[-1]
    attr = (
        F.binary_cross_entropy_with_logits(attr_logits.float(), attributes)
        if attr_logits.shape[1]
        else attr_logits.sum() * 0.0
    )
    return torch.stack(per_level).sum() + attr, per_level, attr


class TaggerModule(pl.LightningModule):
    """Trains a `FashionModel`; logs train_loss, val_loss, val_acc_<level> and val_acc_leaf.

    `features_input=True` trains the head alone on precomputed backbone features
    (`--freeze-backbone`).
    """

    def __init__(
        self,
        model: FashionModel,
        spec: ModelSpec,
        config: TrainConfig,
        weights: list[Tensor] | None = None,
        features_input: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.config = config
        self.class_weights = weights
        self.features_input = features_input
        self.lr = float(config.lr) if not isinstance(config.lr, str) else 1e-3
        self.leaves = LeafTable.from_taxonomy(spec.taxonomy)
        self._gen = torch.Generator().manual_seed(config.seed)
        self._val: dict[str, Tensor] = {}

    # -- forward --------------------------------------------------------------------------------
    def _inputs(self, x: Tensor, train: bool) -> Tensor:
        if self.features_input:
            return x
        if not (train and self.config.data.augment != "none"):
            return normalize_tensor(x, self.spec)
        x = AUGMENTATIONS[self.config.data.augment](x.float() / 255.0, self._gen)
        return normalize_tensor(x, self.spec, pixel_max=1.0)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.model.head(x) if self.features_input else self.model(x)

    def _freeze_now(self) -> bool:
        m = self.config.model
        return m.freeze_backbone or self.current_epoch < (m.freeze_backbone_epochs or 0)

    def on_train_epoch_start(self) -> None:
        frozen = self._freeze_now() and not self.features_input
        for p in self.model.backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.model.backbone.eval()  # keep BatchNorm statistics of the pretrained weights
        elif self.config.model.freeze_bn:  # small batches: ImageNet's statistics beat theirs
            for layer in self.model.backbone.modules():
                if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                    layer.eval()

    # -- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        x, levels, attrs = batch
        out = self(self._inputs(x, train=True))
        loss, _, _ = hierarchy_loss(
            out, levels, attrs, self.class_weights, self.config.label_smoothing
        )
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def predicted_paths(self, outputs: tuple[Tensor, ...]) -> Tensor:
        """(N, L) the best valid path per image, -1 below its depth: the decoding of `predict`,
        `evaluate` and `serve` (`model.decode`), on the model's probabilities."""
        probs = [torch.softmax(logits.float(), dim=1) for logits in outputs[:-1]]
        return self.leaves.best_paths_torch(probs).to(outputs[0].device)

    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def _acc(self, key: str, correct: Tensor, total: Tensor) -> None:
        c, t = self._val.get(key, (torch.zeros((), device=correct.device),) * 2)
        self._val[key] = (c + correct, t + total)

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        x, levels, attrs = batch
        out = self(self._inputs(x, train=False))
        loss, _, _ = hierarchy_loss(out, levels, attrs, self.class_weights)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        pred_paths = self.predicted_paths(out)
        for lvl, name in enumerate(self.spec.taxonomy.level_names):
            y = levels[:, lvl]
            valid = y >= 0
            self._acc(
                f"val_acc_{name}",
                ((pred_paths[:, lvl] == y) & valid).sum().float(),
                valid.sum().float(),
            )
        exact = (pred_paths == levels).all(dim=1)
        self._acc("val_acc_leaf", exact.sum().float(), torch.tensor(float(len(x)), device=x.device))

    def on_validation_epoch_end(self) -> None:
        for key, (c, t) in self._val.items():
            c, t = self.all_gather(c).sum(), self.all_gather(t).sum()
            self.log(key, c / t.clamp(min=1), prog_bar=key == "val_acc_leaf")

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.config
        # discriminative learning rates: a pretrained backbone moves less than the new heads
        lrs = [self.lr]
        groups = [{"params": list(self.model.head.parameters()), "lr": self.lr,
                   "weight_decay": cfg.model.head_weight_decay}]  # fmt: skip
        if not self.features_input:
            lrs.append(self.lr * (cfg.model.backbone_lr_scale or 1.0))
            groups.append({"params": list(self.model.backbone.parameters()), "lr": lrs[-1],
                           "weight_decay": cfg.weight_decay})  # fmt: skip
        opt = torch.optim.AdamW(groups, lr=self.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if cfg.schedule == "constant" or (cfg.schedule == "onecycle" and total < 2):
            return opt  # one step has no cycle to follow
        if cfg.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=lrs, total_steps=total, pct_start=onecycle_warmup(total)
            )
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def onecycle_warmup(total_steps: int) -> float:
    """OneCycle's warm-up share: a quarter of the steps, but long enough that both phases span
    more than one step (OneCycleLR divides by each phase's length: 4 steps at 0.25 gave a
    warm-up of zero steps and a ZeroDivisionError)."""
    return min(0.75, max(0.25, 1.5 / total_steps))
