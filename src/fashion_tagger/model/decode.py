"""Path decoding, written once: per-level probabilities to the best valid root-to-leaf path.

A prediction is always a path of the taxonomy: the leaf whose path has the highest sum of
per-level log-probabilities (levels below a shallow leaf's depth do not count). Validation
(`training.module`), `evaluate` (`evaluation.scoring`), `predict` and `serve` (`Tagger`) and the
ONNX parity check all decode here, with one floor for log(0), so they never disagree on a
near-tie. The numpy functions serve the torch-free paths (ONNX Runtime); the `*_torch` twins run
on the training device. Both compute in float64 and take the first leaf of a tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fashion_tagger.taxonomy import Taxonomy

if TYPE_CHECKING:  # pragma: no cover
    import torch

LOG_FLOOR = 1e-12
"""Probabilities below this count as this in log space: float32 softmax outputs underflow to 0,
and ONNX Runtime and torch differ below it, so finer distinctions would be noise."""


def log_probs(p: np.ndarray) -> np.ndarray:
    """log(max(p, LOG_FLOOR)) in float64."""
    return np.log(np.maximum(np.asarray(p, dtype=np.float64), LOG_FLOOR))


def log_probs_torch(p: torch.Tensor) -> torch.Tensor:
    """The torch twin of `log_probs` (float64; on CPU where the device has no float64)."""
    if p.device.type == "mps":
        p = p.cpu()
    return p.double().clamp_min(LOG_FLOOR).log()


@dataclass(frozen=True)
class LeafTable:
    """The leaves of a taxonomy as index paths, in `Taxonomy.leaves()` order.

    Attributes:
        paths: per leaf, its class index at each level from the root (length = its depth).
        index: (levels, leaves) int64: class index of each leaf's path per level, -1 below its
            depth.
    """

    paths: tuple[tuple[int, ...], ...]
    index: np.ndarray
    _on_device: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_taxonomy(cls, taxonomy: Taxonomy) -> LeafTable:
        paths = tuple(tuple(p) for p in taxonomy.leaf_index_paths())
        index = np.full((taxonomy.depth, len(paths)), -1, dtype=np.int64)
        for j, p in enumerate(paths):
            index[: len(p), j] = p
        return cls(paths, index)

    def __len__(self) -> int:
        return len(self.paths)

    # -- numpy ----------------------------------------------------------------------------------
    def path_log_scores(self, levels: Sequence[np.ndarray]) -> np.ndarray:
        """(N, leaves) float64: the log-probability of every leaf's path, summed over its levels.

        Args:
            levels: per level, (N, C_l) class probabilities.
        """
        n = len(levels[0]) if len(levels) else 0
        scores = np.zeros((n, len(self)), dtype=np.float64)
        for lvl, p in enumerate(levels):
            idx = self.index[lvl]
            deep = idx >= 0
            scores[:, deep] += log_probs(p)[:, idx[deep]]
        return scores

    def best_leaves(self, levels: Sequence[np.ndarray]) -> np.ndarray:
        """(N,) the leaf (a column of `index`) with the best path score."""
        return self.path_log_scores(levels).argmax(axis=1)

    def best_paths(self, levels: Sequence[np.ndarray]) -> np.ndarray:
        """(N, L) class index per level of each row's best valid path, -1 below its depth."""
        return self.index[:, self.best_leaves(levels)].T

    # -- torch ----------------------------------------------------------------------------------
    def index_on(self, device: torch.device) -> torch.Tensor:
        """`index` as a tensor on `device` (made once per device)."""
        import torch

        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = torch.from_numpy(self.index).to(device)
        return self._on_device[key]

    def path_log_scores_torch(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """The torch twin of `path_log_scores` (float64, on the probabilities' device)."""
        import torch

        logs = [log_probs_torch(p) for p in levels]
        device = logs[0].device
        index = self.index_on(device)
        scores = torch.zeros(logs[0].shape[0], len(self), dtype=torch.float64, device=device)
        for lvl, lp in enumerate(logs):
            idx = index[lvl]
            deep = idx >= 0
            scores[:, deep] += lp[:, idx[deep]]
        return scores

    def best_leaves_torch(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """The torch twin of `best_leaves`."""
        return self.path_log_scores_torch(levels).argmax(dim=1)

    def best_paths_torch(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """The torch twin of `best_paths`, on the probabilities' device."""
        leaves = self.best_leaves_torch(levels)
        return self.index_on(leaves.device)[:, leaves].T
