"""Which TensorRT calibrator base a :class:`~trtkld.trt.calibrator.KLDCalibrator` derives from.

TensorRT's calibrator classes are pybind11 classes of the running ``tensorrt`` module, so the
calibrator's class is made at construction time: ``type("KLDCalibrator", (KLDCalibrator,
base), ...)``, one per base, cached. The base decides the cache header's algorithm
(``EntropyCalibration2`` for ``IInt8EntropyCalibrator2``, ...): TensorRT's C++ side returns the
base's ``getAlgorithm()`` whatever Python says, so the two must agree.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

from trtkld.errors import TrtkldError

# Calibrator base class name -> (cache header algorithm, trt.CalibrationAlgoType member).
CALIBRATOR_ALGORITHMS = {
    "IInt8EntropyCalibrator2": ("EntropyCalibration2", "ENTROPY_CALIBRATION_2"),
    "IInt8EntropyCalibrator": ("EntropyCalibration", "ENTROPY_CALIBRATION"),
    "IInt8MinMaxCalibrator": ("MinMaxCalibration", "MINMAX_CALIBRATION"),
}


def algorithm_of_base(base: type) -> str:
    """Cache header algorithm for a calibrator base class, from the TensorRT class in its MRO."""
    for klass in base.__mro__:
        if klass.__name__ in CALIBRATOR_ALGORITHMS:
            return CALIBRATOR_ALGORITHMS[klass.__name__][0]
    raise TrtkldError(
        f"calibrator base class {base.__module__}.{base.__qualname__} derives from none of "
        f"{', '.join('trt.' + n for n in CALIBRATOR_ALGORITHMS)}; the cache algorithm cannot "
        f"be chosen (IInt8LegacyCalibrator is not supported)"
    )


def algo_type_member(algorithm: str) -> str:
    """``trt.CalibrationAlgoType`` member name for a cache header algorithm."""
    for header, member in CALIBRATOR_ALGORITHMS.values():
        if header == algorithm:
            return member
    raise TrtkldError(f"no TensorRT calibration algorithm type for cache algorithm {algorithm!r}")


def resolve_base(base_class: Optional[type]) -> type:
    """The base to derive from: ``trt.IInt8EntropyCalibrator2`` by default, after refusing a
    TensorRT without calibrators (11+), for the default and for an injected base alike."""
    from trtkld.trt import _backend

    if base_class is None:
        return _backend.require_calibrator_api().IInt8EntropyCalibrator2
    module = sys.modules.get(getattr(base_class, "__module__", "").split(".")[0])
    if module is not None and getattr(module, "__name__", "") in ("tensorrt", "tensorrt_bindings"):
        _backend.require_calibrator_api(sys.modules.get("tensorrt", module))
    return base_class


class _ClassCache:
    """One derived class per (shell class, base class)."""

    def __init__(self) -> None:
        self._classes: dict[tuple[type, type], type] = {}

    def get(self, shell: type, base: type) -> type:
        key = (shell, base)
        klass = self._classes.get(key)
        if klass is None:
            algorithm_of_base(base)  # fail early for an unsupported base
            # type() picks the most derived metaclass (pybind11's for TensorRT's classes).
            klass = type(
                shell.__name__,
                (shell, base),
                {"_trt_base": base, "__module__": shell.__module__,
                 "__qualname__": f"{shell.__qualname__}[{base.__name__}]"},
            )
            self._classes[key] = klass
        return klass


CLASSES = _ClassCache()


def derived_class(shell: type, base_class: Any) -> type:
    """``shell`` combined with the TensorRT calibrator ``base_class`` (cached)."""
    return CLASSES.get(shell, base_class)
