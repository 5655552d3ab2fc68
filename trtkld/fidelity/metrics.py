"""Fidelity metrics of an INT8 (Q/DQ) model against FP32, accumulated batch by batch.

All accumulators are streaming (no output is kept after its batch), sums are float64, and every
metric has a defined value for degenerate inputs (all-zero references, identical outputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from trtkld.errors import EvaluationError

INT8_MIN, INT8_MAX = -128, 127  # ONNX / TensorRT QuantizeLinear saturation range
THRESHOLD_STEPS = 127           # amax = 127 * scale (symmetric INT8)


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - q)^2)`` in dB.

    Both arguments are sums of squares (>= 0).  Identical outputs give +inf; a zero reference
    with nonzero error gives -inf; nothing at all (both zero) is undefined: NaN.
    """
    if noise_energy <= 0.0:
        return math.inf if signal_energy > 0.0 else math.nan
    if signal_energy <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


def fake_quantize(x: np.ndarray, scale: float) -> np.ndarray:
    """What a QuantizeLinear(int8, zero point 0) + DequantizeLinear pair does to ``x``.

    Args:
        x: float array, any shape (activation units).
        scale: activation units per INT8 step (> 0).
    Returns:
        float32 array of x's shape: ``clip(round_half_even(x / scale), -128, 127) * scale``.
    """
    s = np.float32(scale)
    q = np.rint(np.asarray(x, dtype=np.float32) / s)
    np.clip(q, INT8_MIN, INT8_MAX, out=q)
    q *= s
    return q


def _energy(a: np.ndarray) -> float:
    """Sum of squares in float64 (float32 accumulation loses digits over large tensors).

    ``einsum``, not ``dot``: a BLAS dot spins its thread pool, which on a busy machine costs
    100x the arithmetic for the small arrays measured here."""
    flat = np.asarray(a, dtype=np.float64).ravel()
    return float(np.einsum("i,i->", flat, flat))


def per_sample_cosine(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (axis 0) of two same-shape arrays, float64 (N,).

    Two all-zero samples are identical (1.0); one all-zero sample against a nonzero one is 0.0.
    """
    a = np.asarray(ref, dtype=np.float64).reshape(ref.shape[0], -1)
    b = np.asarray(test, dtype=np.float64).reshape(test.shape[0], -1)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    out = np.zeros(a.shape[0], dtype=np.float64)
    both_zero = (na == 0) & (nb == 0)
    ok = (na > 0) & (nb > 0)
    out[both_zero] = 1.0
    out[ok] = dot[ok] / (na[ok] * nb[ok])
    return np.clip(out, -1.0, 1.0)


def is_classifier_output(shape: tuple[int, ...]) -> bool:
    """A classifier's score output: rank 2 ``[N, C]`` with more than one class."""
    return len(shape) == 2 and shape[1] > 1


@dataclass
class OutputAccumulator:
    """Fidelity of one model output over every evaluation sample.

    ``sqnr_db`` is over all samples together (total energies), ``cosine`` the mean per-sample
    cosine, ``top1_agreement`` the share of samples whose argmax class is the same (only for
    classifier outputs, else None).
    """

    name: str
    signal: float = 0.0
    noise: float = 0.0
    cosine_sum: float = 0.0
    samples: int = 0
    top1_same: int = 0
    classifier: Optional[bool] = None
    nonfinite: int = 0

    def update(self, ref: np.ndarray, test: np.ndarray) -> None:
        if ref.shape != test.shape:
            raise EvaluationError(
                f"output {self.name}: Q/DQ shape {test.shape} != FP32 {ref.shape}")
        bad = ~np.isfinite(test)
        if bad.any():
            # A NaN/Inf in the INT8 output is a destroyed output: count it, and let it weigh as
            # maximal error rather than poisoning the sums with NaN.
            self.nonfinite += int(bad.sum())
            test = np.where(bad, 0.0, test).astype(np.float32)
            self.noise = math.inf
        ref64 = np.asarray(ref, dtype=np.float64)
        self.signal += _energy(ref64)
        if math.isfinite(self.noise):
            self.noise += _energy(ref64 - np.asarray(test, dtype=np.float64))
        n = ref.shape[0] if ref.ndim else 1
        r2 = ref.reshape(n, -1) if ref.ndim else ref.reshape(1, 1)
        t2 = test.reshape(n, -1) if test.ndim else test.reshape(1, 1)
        self.cosine_sum += float(per_sample_cosine(r2, t2).sum())
        self.samples += n
        if self.classifier is None:
            self.classifier = is_classifier_output(tuple(ref.shape))
        if self.classifier:
            self.top1_same += int((ref.argmax(axis=1) == test.argmax(axis=1)).sum())

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.signal, self.noise) if math.isfinite(self.noise) else -math.inf

    @property
    def cosine(self) -> float:
        return self.cosine_sum / self.samples if self.samples else math.nan

    @property
    def top1_agreement(self) -> Optional[float]:
        if not self.classifier or not self.samples:
            return None
        return self.top1_same / self.samples


@dataclass
class TensorAccumulator:
    """Fake-quantization error of FP32 activations with one method's scales.

    For each tensor: signal and noise energies (SQNR), and how many values lie above the
    clipping threshold ``amax = 127 * scale`` (the share that saturates).
    """

    scales: dict[str, np.float32]
    signal: dict[str, float] = field(default_factory=dict)
    noise: dict[str, float] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    def update(self, name: str, x: np.ndarray) -> None:
        if name not in self.scales:
            return
        s = self.scales[name]
        x32 = np.asarray(x, dtype=np.float32)
        finite = np.isfinite(x32)
        if not finite.all():
            x32 = x32[finite]  # NaN/Inf activations cannot be measured; the histograms report them
        err = x32.astype(np.float64) - fake_quantize(x32, s)
        self.signal[name] = self.signal.get(name, 0.0) + _energy(x32)
        self.noise[name] = self.noise.get(name, 0.0) + _energy(err)
        amax = np.float32(np.float64(s) * THRESHOLD_STEPS)
        self.clipped[name] = self.clipped.get(name, 0) + int(np.count_nonzero(np.abs(x32) > amax))
        self.count[name] = self.count.get(name, 0) + int(x32.size)

    def sqnr(self) -> dict[str, float]:
        return {n: sqnr_db(self.signal[n], self.noise[n]) for n in self.signal}

    def clipped_fraction(self) -> dict[str, float]:
        return {n: (self.clipped[n] / self.count[n]) if self.count[n] else 0.0 for n in self.count}
