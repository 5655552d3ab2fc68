"""Fixtures for the TensorRT layer's tests: a fake ``tensorrt`` module, the pycuda fake
(tests/helpers/pycuda_fake.py) and the real-bindings harness (tools/realbind/harness.py)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.helpers.pycuda_fake import install_fake_pycuda
from tests.helpers.trt_fakes import make_fake_tensorrt

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_trt(monkeypatch):
    """A fake ``tensorrt`` 10.9.0.34 with the three calibrator base classes."""
    trt = make_fake_tensorrt("10.9.0.34")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


@pytest.fixture
def fake_pycuda(monkeypatch):
    return install_fake_pycuda(monkeypatch)


@pytest.fixture(scope="session")
def realbind():
    """tools/realbind/harness.py, loaded by path (it is tooling, not a package module)."""
    path = REPO / "tools" / "realbind" / "harness.py"
    spec = importlib.util.spec_from_file_location("trtkld_realbind_harness", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
