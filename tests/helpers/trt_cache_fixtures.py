"""Where the real TensorRT cache files live (vendored copy first, then shared/ beside the clone)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

# The real caches written by TensorRT that the cache and diff tests read.
TRT_CACHE_FIXTURES = (
    "yolov5_trt8600_entropy2.cache",
    "deimkit_trt100900_entropy2.cache",
    "mpnet_trt101303_minmax.cache",
)


def find_trt_cache_fixtures(names: Iterable[str]) -> Path:
    """The folder holding every file in ``names``; fails the test (never skips) if none does."""
    names = sorted(names)
    here = Path(__file__).resolve()
    candidates = [
        here.parents[1] / "fixtures" / "trt_caches",
        here.parents[3] / "shared" / "fixtures" / "trt_caches",
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
