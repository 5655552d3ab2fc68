"""Test doubles for the TensorRT Python API surface the calibrator touches (no GPU, no TensorRT).

``make_fake_tensorrt(version)`` builds a module named ``tensorrt`` holding only what
trtkld.trt uses from a real TensorRT 8.6-10.x: ``__version__``, the three calibrator base
classes (whose ``__init__`` must be called, as pybind11's must) and ``CalibrationAlgoType``.
With ``calibrators=False`` it looks like TensorRT 11, which removed them.
"""
from __future__ import annotations

import enum
import types


class CalibrationAlgoType(enum.Enum):
    LEGACY_CALIBRATION = 0
    ENTROPY_CALIBRATION = 1
    ENTROPY_CALIBRATION_2 = 2
    MINMAX_CALIBRATION = 3


class _CalibratorBase:
    """Stands in for TensorRT's pybind11 calibrator base: records that __init__ ran."""

    algo: CalibrationAlgoType

    def __init__(self) -> None:
        self.base_initialised = True

    def get_algorithm(self) -> CalibrationAlgoType:
        return self.algo


def make_fake_tensorrt(version: str = "10.9.0.34", *, calibrators: bool = True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    if calibrators:
        for name, algo in (
            ("IInt8EntropyCalibrator2", CalibrationAlgoType.ENTROPY_CALIBRATION_2),
            ("IInt8EntropyCalibrator", CalibrationAlgoType.ENTROPY_CALIBRATION),
            ("IInt8MinMaxCalibrator", CalibrationAlgoType.MINMAX_CALIBRATION),
        ):
            klass = type(name, (_CalibratorBase,), {"algo": algo, "__module__": "tensorrt"})
            setattr(trt, name, klass)
        trt.CalibrationAlgoType = CalibrationAlgoType
    return trt
