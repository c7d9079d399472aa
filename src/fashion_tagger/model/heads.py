"""Heads: pooled features (N, F) to `(logits_level_0, ..., logits_level_{L-1}, attribute_logits)`.

Registered by name with the typed spec that holds (and validates) their options, as timm
registers models: `unified` (Ferreira et al. 2018, generalised to any number of levels),
`multi` (independent heads per level) and `flat` (one softmax over leaves). A new head is a
`HeadSpec` subclass in `model.spec` and an `nn.Module` here registered with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fashion_tagger.model.spec import (
    FlatHeadSpec,
    HeadSpec,
    ModelError,
    MultiHeadSpec,
    UnifiedHeadSpec,
    head_spec,
)
from fashion_tagger.taxonomy import Taxonomy

HeadClass = Callable[[int, Taxonomy, int, Any], nn.Module]
_HEADS: dict[str, HeadClass] = {}


def register_head(spec_class: type[HeadSpec]) -> Callable[[HeadClass], HeadClass]:
    """Register a head module for the spec class of its kind (usable as `--head kind`)."""

    def deco(cls: HeadClass) -> HeadClass:
        _HEADS[spec_class.kind] = cls
        return cls

    return deco


def list_heads() -> list[str]:
    """The heads `--head` can build."""
    return sorted(_HEADS)


def _branch(cin: int, hidden: int, dropout: float) -> nn.Module:
    """A dense branch: Linear + ReLU + Dropout (identity when hidden == 0)."""
    if hidden <= 0:
        return nn.Identity()
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))


@register_head(MultiHeadSpec)
class MultiHead(nn.Module):
    """Independent heads per level and for attributes: the first baseline."""

    def __init__(
        self,
        in_features: int,
        taxonomy: Taxonomy,
        num_attributes: int,
        spec: HeadSpec,
    ) -> None:
        super().__init__()
        hidden, dropout = spec.hidden, spec.dropout
        width = hidden if hidden > 0 else in_features
        self.branches = nn.ModuleList(_branch(in_features, hidden, dropout) for _ in taxonomy.sizes)
        self.classifiers = nn.ModuleList(nn.Linear(width, n) for n in taxonomy.sizes)
        self.attr_branch = _branch(in_features, hidden, dropout)
        self.attr_classifier = nn.Linear(width, num_attributes)

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        levels = [c(b(features)) for b, c in zip(self.branches, self.classifiers, strict=True)]
        return (*levels, self.attr_classifier(self.attr_branch(features)))


@register_head(FlatHeadSpec)
class FlatHead(nn.Module):
    """One softmax over the leaves: the second baseline.

    Level "logits" are the log of the marginal probability of each node (the sum of its leaves'
    probabilities), so that softmax per level gives back those marginals. A level where some
    leaves are shallower is renormalised over the deeper ones.
    """

    def __init__(
        self,
        in_features: int,
        taxonomy: Taxonomy,
        num_attributes: int,
        spec: HeadSpec,
    ) -> None:
        super().__init__()
        hidden, dropout = spec.hidden, spec.dropout
        width = hidden if hidden > 0 else in_features
        paths = taxonomy.leaf_index_paths()
        self.branch = _branch(in_features, hidden, dropout)
        self.leaves = nn.Linear(width, len(paths))
        for level, n in enumerate(taxonomy.sizes):
            m = torch.zeros(len(paths), n)
            for j, p in enumerate(paths):
                if level < len(p):
                    m[j, p[level]] = 1.0
            self.register_buffer(f"membership_{level}", m, persistent=False)
        self.depth = taxonomy.depth
        self.attr_branch = _branch(in_features, hidden, dropout)
        self.attr_classifier = nn.Linear(width, num_attributes)

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        leaf_p = torch.softmax(self.leaves(self.branch(features)), dim=1)
        levels = [
            torch.log(leaf_p @ getattr(self, f"membership_{lvl}") + 1e-12)
            for lvl in range(self.depth)
        ]
        return (*levels, self.attr_classifier(self.attr_branch(features)))


@register_head(UnifiedHeadSpec)
class UnifiedHead(nn.Module):
    """The structured-output head of Ferreira et al. (2018, arXiv:1806.09445), generalised.

    One dense branch per level and one for attributes on the pooled features; then message
    passing over the levels, top-down (level l receives from level l-1, already refined) and
    back up (level l receives from level l+1, refined on the way up), each step a residual
    `relu(own + message)`. Final level logits come from the refined representations; attribute
    logits from their branch plus a projection of the class probabilities of every level (the
    leaf level, and the shallower levels for paths that stop early).

    `spec.messages` says what a message is made of: see `MESSAGES`. With "label", the top-down
    message is a projection of an auxiliary (unsupervised) classifier's probabilities at the
    parent level and the bottom-up one a projection of the child's final probabilities.
    """

    def __init__(
        self,
        in_features: int,
        taxonomy: Taxonomy,
        num_attributes: int,
        spec: UnifiedHeadSpec,
    ) -> None:
        super().__init__()
        messages, dropout = spec.messages, spec.dropout
        self.messages = messages
        hidden = spec.hidden if spec.hidden > 0 else in_features
        sizes = taxonomy.sizes
        self.branches = nn.ModuleList(_branch(in_features, hidden, dropout) for _ in sizes)
        if messages == "label":
            # auxiliary classifiers of the levels that send a message down: all but the last
            self.down_classifiers = nn.ModuleList(nn.Linear(hidden, n) for n in sizes[:-1])
            self.down_msgs = nn.ModuleList(nn.Linear(n, hidden) for n in sizes[:-1])
            self.up_msgs = nn.ModuleList(nn.Linear(n, hidden) for n in sizes[1:])
        else:
            self.down_msgs = nn.ModuleList(nn.Linear(hidden, hidden) for _ in sizes[:-1])
            self.up_msgs = nn.ModuleList(nn.Linear(hidden, hidden) for _ in sizes[1:])
        self.classifiers = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.attr_branch = _branch(in_features, hidden, dropout)
        self.attr_classifier = nn.Linear(hidden, num_attributes)
        self.attr_msg = nn.Linear(sum(sizes), num_attributes)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # run dirs written before 2026-11-30 hold an auxiliary classifier for the deepest level,
        # which sent no message (and broke DDP, which wants every parameter used): drop it
        stale = f"{prefix}down_classifiers.{len(self.branches) - 1}."
        for key in [k for k in state_dict if k.startswith(stale)]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _down(self, lvl: int, parent: Tensor) -> Tensor:
        """The message from level lvl-1's refined representation to level lvl."""
        if self.messages == "label":
            parent = torch.softmax(self.down_classifiers[lvl - 1](parent), dim=1)
        return self.down_msgs[lvl - 1](parent)

    def _up(self, lvl: int, child: Tensor, child_logits: Tensor) -> Tensor:
        """The message from level lvl+1 to level lvl."""
        src = torch.softmax(child_logits, dim=1) if self.messages == "label" else child
        return self.up_msgs[lvl](src)

    def forward(self, features: Tensor) -> tuple[Tensor, ...]:
        depth = len(self.branches)
        down = [b(features) for b in self.branches]
        for lvl in range(1, depth):
            down[lvl] = F.relu(down[lvl] + self._down(lvl, down[lvl - 1]))
        up = list(down)
        logits: list[Tensor] = [torch.empty(0)] * depth
        for lvl in reversed(range(depth)):
            if lvl < depth - 1:
                up[lvl] = F.relu(down[lvl] + self._up(lvl, up[lvl + 1], logits[lvl + 1]))
            logits[lvl] = self.classifiers[lvl](up[lvl])
        probs = torch.cat([torch.softmax(z, dim=1) for z in logits], dim=1)
        attrs = self.attr_classifier(self.attr_branch(features)) + self.attr_msg(probs)
        return (*logits, attrs)


def create_head(
    head: str | HeadSpec,
    in_features: int,
    taxonomy: Taxonomy,
    num_attributes: int,
    **options: Any,
) -> nn.Module:
    """The head of a spec, or of a kind and its options (validated by the kind's spec)."""
    if isinstance(head, str):
        head = head_spec(head, **options)
    elif options:
        raise TypeError("give options either in the HeadSpec or as keywords, not both")
    if head.kind not in _HEADS:
        raise ModelError(f"unknown head {head.kind!r}; choose one of {', '.join(list_heads())}")
    with warnings.catch_warnings():  # no attributes: a 0-output layer is fine, not worth a warning
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        return _HEADS[head.kind](in_features, taxonomy, num_attributes, head)
