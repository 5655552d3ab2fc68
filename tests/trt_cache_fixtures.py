"""Where the real TensorRT cache files live (vendored copy first, then shared/ beside the clone)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest


def find_trt_cache_fixtures(names: Iterable[str]) -> Path:
    """The folder holding every file in ``names``; fails the test (never skips) if none does."""
    names = sorted(names)
    here = Path(__file__).resolve()
    candidates = [
        here.parent / "fixtures" / "trt_caches",
        here.parents[2] / "shared" / "fixtures" / "trt_caches",
    ]
    for folder in candidates:
        if all((folder / name).is_file() for name in names):
            return folder
    pytest.fail(
        "TensorRT cache fixtures not found: expected " + ", ".join(names)
        + " in one of: " + ", ".join(str(c) for c in candidates)
        + " (clone the project so that shared/ sits beside the repository folder, or vendor "
        "the files into tests/fixtures/trt_caches)"
    )
