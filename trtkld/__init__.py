"""trtkld: selectable, reproducible KL-divergence INT8 calibration for TensorRT.

Pipeline, one sub-package per stage::

    data -> collect -> histogram -> search -> cache / qdq -> calibration -> trt / cli / report

``trtkld.calibrate(model, data, methods=[...])`` returns a :class:`trtkld.Calibration`
(see :mod:`trtkld.calibration`). Nothing imported here touches TensorRT or pycuda;
``KLDCalibrator`` and the calibration API are resolved lazily so ``import trtkld`` stays light
and works on machines without a GPU.
"""
from __future__ import annotations

from trtkld._version import __version__

__all__ = ["__version__", "Calibration", "KLDCalibrator", "calibrate"]


def __getattr__(name: str):
    if name in ("calibrate", "Calibration"):
        from trtkld import calibration

        return getattr(calibration, name)
    if name == "KLDCalibrator":
        from trtkld.trt.calibrator import KLDCalibrator

        return KLDCalibrator
    raise AttributeError(f"module 'trtkld' has no attribute {name!r}")
