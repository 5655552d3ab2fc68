"""One tensor's |x| histogram: fixed range [0, hist_max], int64 counts, running statistics."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from trtkld.errors import HistogramError
from trtkld.histogram.stats import TensorStats, as_float_array

if TYPE_CHECKING:
    from trtkld.histogram.kernels import RawScan


def check_bins(num_bins: object, what: str) -> int:
    """``num_bins`` as a positive int, else HistogramError naming ``what``."""
    if isinstance(num_bins, (bool, np.bool_)) or not isinstance(num_bins, (int, np.integer)):
        raise HistogramError(f"{what}: num_bins must be a positive integer, found {num_bins!r}")
    if num_bins < 1 or num_bins > 2**30:
        raise HistogramError(f"{what}: num_bins must be in [1, 2**30], found {num_bins}")
    return int(num_bins)


def inverse_width(num_bins: int, hist_max: object, what: str) -> float | None:
    """float64(B) / float64(R) of the binning rule; None when hist_max == 0 (nothing is binned)."""
    try:
        r = float(hist_max)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise HistogramError(f"{what}: hist_max must be a number, found {hist_max!r}") from None
    if not math.isfinite(r) or r < 0.0:
        raise HistogramError(f"{what}: hist_max must be finite and >= 0, found {r!r}")
    if r == 0.0:
        return None
    # Python floats are IEEE float64 and their division overflows to inf without raising, so
    # this equals float64(B) / float64(R) (np.errstate around a numpy division cost ~5 us per
    # tensor per batch); overflow is reported below.
    inv = float(num_bins) / r
    if not math.isfinite(inv):
        raise HistogramError(
            f"{what}: hist_max {r!r} is too small for {num_bins} bins (bin width underflows)"
        )
    return inv


def _scan_checked(x: np.ndarray, num_bins: int, hist_max: float, what: str) -> RawScan:
    """Histogram + statistics of ``x``; with hist_max == 0 every finite value must be 0."""
    # numba (and kernel compilation or cache loading) only when data is first binned, so that
    # loading and searching saved histograms starts fast
    from trtkld.histogram.kernels import scan

    inv = inverse_width(num_bins, hist_max, what)
    raw = scan(x, num_bins, inv)
    if inv is None:
        absmax = max(abs(raw.min), abs(raw.max))
        if absmax != 0.0:
            raise HistogramError(
                f"{what}: hist_max is 0 (pass 1 saw only zeros or no finite values) but this "
                f"data has |x| up to {absmax!r}; pass-1 and pass-2 data differ"
            )
    return raw


def abs_histogram(x: np.ndarray, num_bins: int, hist_max: float) -> np.ndarray:
    """Histogram of |x| over [0, hist_max] with ``num_bins`` equal bins.

    x: any shape, float16/float32/float64. Returns (num_bins,) int64 counts. Finite values only
    (NaN/+-Inf are skipped); bin of v is ``min(int(float64(|v|) * (B / R)), B - 1)``, so
    |v| == hist_max and |v| > hist_max land in the last bin. ``hist_max == 0`` returns all zeros
    (bin 0 is not filled) and requires every finite value to be 0.
    """
    num_bins = check_bins(num_bins, "abs_histogram")
    arr = as_float_array(x, "abs_histogram input")
    raw = _scan_checked(arr, num_bins, hist_max, "abs_histogram")
    if raw.counts is None:  # hist_max == 0
        return np.zeros(num_bins, np.int64)
    from trtkld.histogram.kernels import release

    counts = raw.counts.copy()
    release(raw)
    return counts


class TensorHistogram:
    """|x| histogram of one tensor over [0, hist_max] plus running statistics.

    name: tensor name; counts: (B,) int64; hist_max: R in activation units (from pass 1);
    min/max/absmax: finite values seen by :meth:`update` (0.0 while none);
    num_values: finite values seen (== counts.sum() when hist_max > 0);
    num_nan/num_posinf/num_neginf: non-finite values seen (never binned).
    """

    __slots__ = ("name", "counts", "hist_max", "stats")

    def __init__(
        self,
        name: str,
        num_bins: int | None = None,
        hist_max: float = 0.0,
        *,
        counts: np.ndarray | None = None,
        stats: TensorStats | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise HistogramError(f"tensor name must be a str, found {name!r}")
        what = f"tensor {name!r}"
        if counts is None:
            if num_bins is None:
                raise HistogramError(f"{what}: give num_bins or counts")
            b = check_bins(num_bins, what)
            arr = np.zeros(b, dtype=np.int64)
        else:
            arr = np.asarray(counts)
            if arr.ndim != 1 or arr.size < 1 or arr.dtype.kind not in "iu":
                raise HistogramError(
                    f"{what}: counts must be a non-empty 1-D integer array, found "
                    f"shape {arr.shape} dtype {arr.dtype}"
                )
            if num_bins is not None and check_bins(num_bins, what) != arr.size:
                raise HistogramError(f"{what}: num_bins {num_bins} != len(counts) {arr.size}")
            if arr.size and int(arr.min()) < 0:
                raise HistogramError(f"{what}: counts must be >= 0, found {int(arr.min())}")
            arr = arr.astype(np.int64, copy=True)
        inv = inverse_width(arr.size, hist_max, what)
        if inv is None and arr.any():
            raise HistogramError(f"{what}: hist_max is 0 but counts are not all zero")
        self.name = name
        self.counts = arr
        self.hist_max = float(hist_max)
        self.stats = stats if stats is not None else TensorStats()

    # ---- read-only views of the statistics (architecture.md field names)
    @property
    def num_bins(self) -> int:
        return int(self.counts.size)

    @property
    def bin_width(self) -> float:
        """R / B in activation units (0.0 for an all-zero tensor)."""
        return self.hist_max / self.counts.size

    @property
    def min(self) -> float:
        return self.stats.min

    @property
    def max(self) -> float:
        return self.stats.max

    @property
    def absmax(self) -> float:
        return self.stats.absmax

    @property
    def num_values(self) -> int:
        return self.stats.num_finite

    @property
    def num_nan(self) -> int:
        return self.stats.num_nan

    @property
    def num_posinf(self) -> int:
        return self.stats.num_posinf

    @property
    def num_neginf(self) -> int:
        return self.stats.num_neginf

    def __repr__(self) -> str:
        return (
            f"TensorHistogram({self.name!r}, bins={self.num_bins}, hist_max={self.hist_max!r}, "
            f"values={self.num_values}, nan={self.num_nan}, +inf={self.num_posinf}, "
            f"-inf={self.num_neginf})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorHistogram):
            return NotImplemented
        return (
            self.name == other.name
            and self.hist_max == other.hist_max
            and self.stats == other.stats
            and np.array_equal(self.counts, other.counts)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    # ---- filling
    def scan(self, x: np.ndarray) -> RawScan:
        """Histogram + statistics of ``x`` alone (no state change); thread-safe, GIL released."""
        arr = as_float_array(x, f"tensor {self.name!r}")
        return _scan_checked(arr, self.num_bins, self.hist_max, f"tensor {self.name!r}")

    def add_scan(self, raw: RawScan) -> None:
        """Fold a :meth:`scan` result into this histogram (consumes it: its buffer is reused)."""
        from trtkld.histogram.kernels import release

        if raw.counts is not None:
            self.counts += raw.counts
            release(raw)
        self.stats = self.stats.merge(TensorStats.from_scan(raw))

    def update(self, x: np.ndarray) -> None:
        """Add the finite |x| of ``x`` (any shape, float16/32/64) to counts and update stats."""
        self.add_scan(self.scan(x))

    # ---- combining
    def copy(self) -> TensorHistogram:
        return TensorHistogram(
            self.name, hist_max=self.hist_max, counts=self.counts, stats=self.stats
        )

    def _check_compatible(self, other: TensorHistogram) -> None:
        if not isinstance(other, TensorHistogram):
            raise HistogramError(f"tensor {self.name!r}: cannot merge with {type(other).__name__}")
        if other.name != self.name:
            raise HistogramError(
                f"cannot merge histograms of different tensors: {self.name!r} and {other.name!r}"
            )
        if other.num_bins != self.num_bins:
            raise HistogramError(
                f"tensor {self.name!r}: cannot merge histograms with {self.num_bins} and "
                f"{other.num_bins} bins"
            )
        if other.hist_max != self.hist_max:
            raise HistogramError(
                f"tensor {self.name!r}: cannot merge histograms with hist_max {self.hist_max!r} "
                f"and {other.hist_max!r} (pass 2 of every run must use the same pass-1 absmax)"
            )

    def merge(self, other: TensorHistogram) -> TensorHistogram:
        """Histogram of both inputs' data: same name, bins and hist_max, else HistogramError."""
        self._check_compatible(other)
        return TensorHistogram(
            self.name,
            hist_max=self.hist_max,
            counts=self.counts + other.counts,
            stats=self.stats.merge(other.stats),
        )

    def rebin(self, num_bins: int) -> TensorHistogram:
        """Exact downsample to ``num_bins`` = B / 2**k by summing adjacent groups of 2**k bins.

        Equal to filling a ``num_bins`` histogram directly from the same data, because
        B/R and num_bins/R differ by a power of two (scaling by 2**k commutes with rounding).
        """
        what = f"tensor {self.name!r}"
        nb = check_bins(num_bins, what)
        b = self.num_bins
        factor = b // nb
        if b % nb or factor & (factor - 1):
            raise HistogramError(
                f"{what}: can only rebin {b} bins by a power-of-two factor, asked for {nb} bins"
            )
        counts = self.counts.reshape(nb, factor).sum(axis=1)
        return TensorHistogram(self.name, hist_max=self.hist_max, counts=counts, stats=self.stats)
