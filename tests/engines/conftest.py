"""Fixtures the Ray engine's test modules share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for the module (its tests run on one xdist worker: tests/conftest.py)."""
    ray = pytest.importorskip("ray", reason="the ray engine needs ray (pip install 'packprep[ray]'); CI installs it")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()
