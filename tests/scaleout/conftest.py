"""The session's local Ray cluster for the scale-out tests."""
from __future__ import annotations

import logging
import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster of 2 CPUs (CI's size) for the whole session, small object store,
    shut down at the end. The ``test`` extra installs ray; without it the tests skip, saying so.
    """
    try:
        import ray
    except ImportError as exc:
        pytest.skip(f"ray is not installed ({exc}); pip install 'trtkld[ray]' to run this test")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=200 * 2**20, log_to_driver=False,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
