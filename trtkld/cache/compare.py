"""Compare two calibration caches tensor by tensor (the engine of ``trtkld diff``).

Disagreement of a tensor present in both caches is ``|ln(scale_a / scale_b)|`` computed in
float64 from the float32 values (0 for identical bits, so two identical inf/0/NaN entries agree).
When the ratio has no logarithm (either scale 0, negative, NaN or inf and the bits differ) the
disagreement is +inf: such a pair sorts first, as the worst.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trtkld.cache.format import CalibrationCache, float32_bits, scale_to_hex


@dataclass(frozen=True)
class TensorScaleDiff:
    """One tensor found in both caches. ratio = scale_a / scale_b (float64, may be inf/nan)."""

    name: str
    scale_a: np.float32
    scale_b: np.float32
    ratio: float
    disagreement: float  # |ln(ratio)|; inf when the ratio has no logarithm

    @property
    def identical(self) -> bool:
        return float32_bits(self.scale_a) == float32_bits(self.scale_b)

    @property
    def factor(self) -> float:
        """max(ratio, 1/ratio) = exp(disagreement): 'off by a factor of'."""
        return math.exp(self.disagreement) if math.isfinite(self.disagreement) else math.inf


@dataclass(frozen=True)
class CacheDiff:
    """Result of :func:`diff_caches`. Lists are deterministic: names only in one cache keep that
    cache's order; ``common`` is sorted by disagreement (descending), ties in A's order."""

    header_a: str
    header_b: str
    version_a: int
    version_b: int
    algorithm_a: str
    algorithm_b: str
    only_in_a: list[str]
    only_in_b: list[str]
    common: list[TensorScaleDiff]

    @property
    def header_differences(self) -> list[str]:
        return [
            what
            for what, differs in (
                ("version", self.version_a != self.version_b),
                ("algorithm", self.algorithm_a != self.algorithm_b),
            )
            if differs
        ]

    @property
    def num_identical(self) -> int:
        return sum(1 for d in self.common if d.identical)

    @property
    def max_factor(self) -> float:
        """Largest max(ratio, 1/ratio) over common tensors (1.0 when there are none)."""
        return max((d.factor for d in self.common), default=1.0)

    def geometric_mean_ratio(self) -> float:
        """exp(mean ln(ratio)) over tensors with a finite log ratio; nan if there are none.

        A systematic bias shows here, e.g. 127/128 = 0.992 between a ``T/128`` and an
        ``amax/127`` scale rule.
        """
        logs = [
            math.log(d.ratio) for d in self.common if math.isfinite(d.disagreement)
        ]
        return math.exp(math.fsum(logs) / len(logs)) if logs else math.nan


def _ratio_and_disagreement(a: np.float32, b: np.float32) -> tuple[float, float]:
    if float32_bits(a) == float32_bits(b):
        return 1.0, 0.0
    fa, fb = float(a), float(b)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = float(np.float64(fa) / np.float64(fb))
    if math.isfinite(ratio) and ratio > 0.0 and fa > 0.0 and fb > 0.0:
        return ratio, abs(math.log(ratio))
    return ratio, math.inf


def diff_caches(a: CalibrationCache, b: CalibrationCache) -> CacheDiff:
    """Tensor-by-tensor comparison of cache ``a`` against cache ``b``."""
    order = {name: i for i, name in enumerate(a.scales)}
    common = []
    for name, scale_a in a.scales.items():
        if name in b.scales:
            scale_b = b.scales[name]
            ratio, disagreement = _ratio_and_disagreement(scale_a, scale_b)
            common.append(TensorScaleDiff(name, scale_a, scale_b, ratio, disagreement))
    common.sort(key=lambda d: (-d.disagreement, order[d.name]))
    return CacheDiff(
        header_a=a.header,
        header_b=b.header,
        version_a=a.version_number,
        version_b=b.version_number,
        algorithm_a=a.algorithm,
        algorithm_b=b.algorithm,
        only_in_a=[n for n in a.scales if n not in b.scales],
        only_in_b=[n for n in b.scales if n not in a.scales],
        common=common,
    )


def json_number(x: float):
    """JSON has no inf/nan: finite floats stay numbers, others become "inf", "-inf", "nan"."""
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def tensor_diff_to_json(d: TensorScaleDiff) -> dict:
    return {
        "name": d.name,
        "scale_a": json_number(d.scale_a),
        "scale_b": json_number(d.scale_b),
        "hex_a": scale_to_hex(d.scale_a),
        "hex_b": scale_to_hex(d.scale_b),
        "ratio": json_number(d.ratio),
        "abs_log_ratio": json_number(d.disagreement),
        "identical": d.identical,
    }
