"""How many CPU cores this process may use: the default for every pool of worker threads."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores in this process's affinity mask (what a container or `taskset` allows), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
