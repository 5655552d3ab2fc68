"""The TensorRT layer: INT8 calibrator, device buffers, GPU histograms, engine builds.

Only :mod:`trtkld.trt._backend` imports ``tensorrt`` / ``pycuda``, lazily; importing this
package (or any trtkld module) works on machines without either.

- :class:`KLDCalibrator` (``trtkld.trt.calibrator``): the calibrator users pass to TensorRT.
- :mod:`trtkld.trt.device`: the device-memory interface and the host-memory TEST backend.
- :mod:`trtkld.trt.kernels`: the CUDA histogram/statistics kernels, as source text.
- :mod:`trtkld.trt.gpu_collect`: the ``tensorrt`` histogram collector.
"""
from __future__ import annotations

__all__ = ["KLDCalibrator", "calibrator_class", "CalibrationError", "require_calibrator_api"]


def __getattr__(name: str):
    if name == "require_calibrator_api":
        # The one public door to the backend's version check (the CLI must not import _backend).
        from trtkld.trt import _backend

        return _backend.require_calibrator_api
    if name in __all__:
        from trtkld.trt import calibrator

        return getattr(calibrator, name)
    raise AttributeError(f"module 'trtkld.trt' has no attribute {name!r}")
