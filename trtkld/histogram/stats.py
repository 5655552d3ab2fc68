"""Per-tensor running statistics: finite min/max/absmax and NaN/+Inf/-Inf counts (pass 1)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from trtkld.errors import HistogramError

if TYPE_CHECKING:
    from trtkld.histogram.kernels import RawScan

_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(x: object, what: str) -> np.ndarray:
    """``x`` as an ndarray of float16/32/64 (no copy), else HistogramError naming ``what``."""
    arr = np.asarray(x)
    if arr.dtype not in _FLOAT_DTYPES:
        raise HistogramError(
            f"{what}: expected a float16/float32/float64 array, found dtype {arr.dtype}"
        )
    return arr


def _total_min(a: float, b: float) -> float:
    # -0.0 < +0.0, as in the kernels' bit-key order, so merging is order-independent bit for bit
    if a == b:
        return a if math.copysign(1.0, a) < 0 else b
    return a if a < b else b


def _total_max(a: float, b: float) -> float:
    if a == b:
        return b if math.copysign(1.0, a) < 0 else a
    return a if a > b else b


@dataclass(frozen=True)
class TensorStats:
    """Statistics of every value seen for one tensor.

    min, max, absmax: over finite values only, in activation units; all 0.0 while
    ``num_finite == 0``. Counts are exact integers. Merging is order-independent (min/max and
    integer sums), so results never depend on batch order or thread scheduling.
    """

    min: float = 0.0
    max: float = 0.0
    absmax: float = 0.0
    num_finite: int = 0
    num_nan: int = 0
    num_posinf: int = 0
    num_neginf: int = 0

    @property
    def num_nonfinite(self) -> int:
        return self.num_nan + self.num_posinf + self.num_neginf

    @property
    def num_total(self) -> int:
        return self.num_finite + self.num_nonfinite

    def merge(self, other: TensorStats) -> TensorStats:
        """Statistics of the union of the values behind ``self`` and ``other``."""
        if other.num_finite == 0:
            lo, hi = self.min, self.max
        elif self.num_finite == 0:
            lo, hi = other.min, other.max
        else:
            lo, hi = _total_min(self.min, other.min), _total_max(self.max, other.max)
        return TensorStats(
            min=lo,
            max=hi,
            absmax=max(abs(lo), abs(hi)),
            num_finite=self.num_finite + other.num_finite,
            num_nan=self.num_nan + other.num_nan,
            num_posinf=self.num_posinf + other.num_posinf,
            num_neginf=self.num_neginf + other.num_neginf,
        )

    @classmethod
    def from_scan(cls, raw: RawScan) -> TensorStats:
        return cls(
            min=raw.min,
            max=raw.max,
            absmax=max(abs(raw.min), abs(raw.max)),
            num_finite=raw.num_finite,
            num_nan=raw.num_nan,
            num_posinf=raw.num_posinf,
            num_neginf=raw.num_neginf,
        )


def tensor_stats(x: np.ndarray, *, name: str = "array") -> TensorStats:
    """Finite min/max/absmax and NaN/+Inf/-Inf counts of ``x`` (any shape; float16/32/64).

    One fused numba pass over the raw bits (pass 1 of calibration). ``name`` only labels errors.
    """
    from trtkld.histogram.kernels import scan  # numba: imported on first use, not at import

    arr = as_float_array(x, f"tensor {name!r}")
    return TensorStats.from_scan(scan(arr, 0, None))
