"""trtkld: selectable, reproducible KL-divergence INT8 calibration for TensorRT.

Pipeline, one sub-package per stage::

    data -> collect -> histogram -> search -> cache / qdq -> trt (calibrator) / cli / report

Nothing imported here touches TensorRT or pycuda; ``KLDCalibrator`` is resolved lazily so
``import trtkld`` works on machines without a GPU.
"""
from __future__ import annotations

from trtkld._version import __version__

__all__ = ["__version__", "KLDCalibrator"]


def __getattr__(name: str):
    if name == "KLDCalibrator":
        from trtkld.trt.calibrator import KLDCalibrator

        return KLDCalibrator
    raise AttributeError(f"module 'trtkld' has no attribute {name!r}")
