"""The TensorRT layer: INT8 calibrator, device buffers, GPU histograms, engine builds.

Only :mod:`trtkld.trt._backend` imports ``tensorrt`` / ``pycuda`` / ``cuda``, lazily; importing
this package (or any trtkld module) works on machines without either.

- :class:`KLDCalibrator` (``trtkld.trt.calibrator``): the calibrator users pass to TensorRT, a
  thin shell over plain collaborators: ``bases`` (which TensorRT base class), ``feeder``
  (batches -> device pointers), ``cache_policy`` (reuse or make our cache);
- :mod:`trtkld.trt.profiles`: optimization-profile shapes under TensorRT's rules;
- :mod:`trtkld.trt.device`: the device-memory interface and the host-memory TEST backend;
- :mod:`trtkld.trt.kernels`: the CUDA histogram/statistics kernels, as source text;
- :mod:`trtkld.trt.gpu_collect`: the ``tensorrt`` histogram collector;
- :mod:`trtkld.trt.engine`: ONNX parsing, INT8 builds, engines.

Public helpers for other packages (the CLI): :func:`require_calibrator_api`,
:func:`tensorrt_version`.
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "KLDCalibrator", "calibrator_class", "CalibrationError", "require_calibrator_api",
    "tensorrt_version",
]


def require_calibrator_api() -> Any:
    """The ``tensorrt`` module if it has INT8 calibrators (8.6 - 10.x), else a clear error."""
    from trtkld.trt import _backend

    return _backend.require_calibrator_api()


def tensorrt_version() -> str:
    """The running TensorRT's version string (TensorRTUnavailableError without TensorRT)."""
    from trtkld.trt import _backend

    return _backend.tensorrt_version()


def __getattr__(name: str):
    if name in ("KLDCalibrator", "calibrator_class", "CalibrationError"):
        from trtkld.trt import calibrator

        return getattr(calibrator, name)
    raise AttributeError(f"module 'trtkld.trt' has no attribute {name!r}")
