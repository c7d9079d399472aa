"""A brute-force oracle for path decoding: every leaf's path scored one by one in plain Python.

`fashion_tagger.model.decode` is the vectorised decoding every stage uses; tests check it (and
the stages that call it) against this deliberately naive version.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fashion_tagger.taxonomy import Taxonomy


def best_path(taxonomy: Taxonomy, log_probs: Sequence[Sequence[float]]) -> tuple[list[int], float]:
    """The valid root-to-leaf path with the highest sum of per-level log-probabilities (the
    first such leaf on a tie), and that sum."""
    best: tuple[list[int], float] = ([], -math.inf)
    for idx in taxonomy.leaf_index_paths():
        score = sum(float(log_probs[lvl][i]) for lvl, i in enumerate(idx))
        if score > best[1]:
            best = (idx, score)
    return best
