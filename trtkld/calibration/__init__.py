"""The calibration API: one home for "calibrate this model" used by the CLI and the calibrator,
and the calibration choices above the search and fidelity stages (the output-measured
``auto`` in :mod:`trtkld.calibration.auto`, its refinement in :mod:`trtkld.calibration.refine`).

::

    import trtkld
    cal = trtkld.calibrate("model.onnx", "calib_data/", methods=["ppq", "nvidia"])
    cal.results["ppq"]                      # tensor -> SearchResult
    cal.histograms.save("model.hist.npz")
    cal.write_cache("model.ppq.cache", method="ppq", trt_version="10.9.0")   # + sidecar
    cal.to_qdq("model.int8.onnx", method="ppq")

Caches are written by :func:`write_calibration_cache` only (cache, then its sidecar).
"""
from __future__ import annotations

from trtkld.calibration.api import Calibration, calibrate, open_calibration_data
from trtkld.calibration.cachefile import (
    DEFAULT_ALGORITHM,
    results_cache,
    tensor_methods,
    write_calibration_cache,
)

__all__ = [
    "DEFAULT_ALGORITHM",
    "Calibration",
    "calibrate",
    "open_calibration_data",
    "results_cache",
    "tensor_methods",
    "write_calibration_cache",
]
