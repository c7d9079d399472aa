"""Fixtures shared by the inference tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster():
    """One local two-CPU Ray cluster per test module: Ray takes seconds to start."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()
