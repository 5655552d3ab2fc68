"""Serving calibration batches to TensorRT: the calibrator's ``get_batch`` without TensorRT.

:class:`BatchFeeder` opens the data (lazily, with the model's input specs), fixes the
calibration shapes from the first batch, and for each ``get_batch(names)`` uploads the next
batch into one device buffer per input and returns the pointers in the order TensorRT asked
for. It knows nothing of TensorRT: tests drive it with
:class:`~trtkld.trt.device.HostBufferBackend`, whose pointers are host addresses.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from trtkld.errors import DataError
from trtkld.trt.device import DeviceBackend, InputBuffers

log = logging.getLogger("trtkld.trt")

Shape = tuple[int, ...]


class LazyCalibrationData:
    """The calibration data of a calibrator, opened on first use.

    ``data``: a :class:`trtkld.data.CalibrationData` or anything ``open_data`` accepts;
    ``None`` means none was given (``require()`` then fails with ``missing_reason``).
    """

    def __init__(
        self,
        data: Any,
        onnx: Optional[Path],
        *,
        batch_size: Optional[int] = None,
        preprocess: Any = None,
    ) -> None:
        self._arg = data
        self.onnx = onnx
        self._batch_size = batch_size
        self._preprocess = preprocess
        self._data: Any = None
        self._specs: Optional[list] = None
        self._shapes: Optional[dict[str, Shape]] = None

    @property
    def given(self) -> bool:
        return self._arg is not None

    def input_specs(self) -> list:
        if self._specs is None:
            if self._arg is not None and hasattr(self._arg, "specs"):
                self._specs = list(self._arg.specs)
            elif self.onnx is not None:
                from trtkld.data import input_specs_from_onnx

                self._specs = input_specs_from_onnx(self.onnx)
            else:
                raise DataError("the calibrator needs `onnx` to know the network inputs")
        return self._specs

    def require(self, missing_reason: str = "no calibration data was given") -> Any:
        """The opened data set (iterable of batches, with ``len``)."""
        if self._data is None:
            data = self._arg
            if data is None:
                raise DataError(missing_reason)
            if hasattr(data, "specs") and hasattr(data, "__iter__") and hasattr(data, "__len__"):
                self._data = data
            else:
                from trtkld.data import PreprocessOptions, open_data

                pre = self._preprocess
                if isinstance(pre, str):
                    pre = PreprocessOptions.preset(pre)
                self._data = open_data(
                    data, self.input_specs(), batch_size=self._batch_size, preprocess=pre
                )
        return self._data

    def calibration_shapes(self) -> dict[str, Shape]:
        """Input name -> the shape every calibration batch has (the calibration profile's OPT).

        The first batch's shapes: a fixed-batch model fixes them, a dynamic one batches up to
        ``batch_size`` (a shorter last batch is padded by repeating rows).
        """
        if self._shapes is None:
            first = next(iter(self.require()), None)
            if first is None:
                raise DataError("calibration data holds no batch")
            self._shapes = {n: tuple(a.shape) for n, a in first.inputs.items()}
        return dict(self._shapes)

    @property
    def known_shapes(self) -> Optional[dict[str, Shape]]:
        """The calibration shapes if already fixed, else None (never opens the data)."""
        return None if self._shapes is None else dict(self._shapes)


class BatchFeeder:
    """Next batch -> device pointers in TensorRT's name order; ``None`` at the end of data.

    ``backend``: a zero-argument callable returning the device backend (created by the
    calibrator BEFORE the build; the feeder only allocates buffers in it).
    Counters (``served``, ``available``, ``exhausted``) let the calibrator check that TensorRT
    consumed all data.
    """

    def __init__(self, data: LazyCalibrationData, backend: Callable[[], DeviceBackend]) -> None:
        self.data = data
        self._backend = backend
        self._iter: Any = None
        self._buffers: Optional[InputBuffers] = None
        self.served = 0
        self.available: Optional[int] = None
        self.exhausted = False

    @property
    def started(self) -> bool:
        return self._iter is not None

    def next_pointers(self, names: Sequence[str]) -> Optional[list[int]]:
        if self._iter is None:
            data = self.data.require()
            self.data.calibration_shapes()
            self.available = len(data)
            self._iter = iter(data)
        try:
            batch = next(self._iter)
        except StopIteration:
            self.exhausted = True
            log.info("calibration data exhausted after %d batch(es)", self.served)
            return None
        ptrs = self._upload(batch, list(names))
        self.served += 1
        return ptrs

    def _upload(self, batch: Any, names: list[str]) -> list[int]:
        specs = {s.name: s for s in self.data.input_specs()}
        where = ", ".join(batch.sources[:3]) + (" ..." if len(batch.sources) > 3 else "")
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise DataError(
                f"TensorRT asked for input(s) {unknown}, which the model's inputs "
                f"{sorted(specs)} do not include"
            )
        missing = [n for n in specs if n not in names]
        if missing:
            raise DataError(
                f"TensorRT asked for inputs {names} but the model also has {missing}; "
                f"the network and {_name(self.data.onnx)} differ"
            )
        shapes = self.data.calibration_shapes()
        if self._buffers is None:
            self._buffers = InputBuffers(self._backend())
            for name, shape in shapes.items():
                nbytes = int(np.prod(shape)) * specs[name].dtype.itemsize
                self._buffers.reserve(name, nbytes)
        ptrs = []
        for name in names:
            if name not in batch.inputs:
                raise DataError(f"batch from {where} has no input {name!r}")
            arr = batch.inputs[name]
            if arr.dtype != specs[name].dtype:
                raise DataError(
                    f"input {name!r} from {where}: dtype {arr.dtype}, the network expects "
                    f"{specs[name].dtype}"
                )
            if tuple(arr.shape) != shapes[name]:
                arr = pad_rows(arr, shapes[name], name, where)
            ptrs.append(self._buffers.upload(name, arr))
        return ptrs

    def close(self) -> None:
        """Free the device buffers (the backend itself belongs to the calibrator)."""
        buffers, self._buffers = self._buffers, None
        if buffers is not None:
            buffers.close()


def _name(path: Optional[os.PathLike]) -> str:
    return "the ONNX model" if path is None else os.fspath(path)


def pad_rows(arr: np.ndarray, want: Shape, name: str, where: str) -> np.ndarray:
    """A short last batch repeated to the calibration batch size; anything else is an error."""
    if arr.ndim == len(want) and arr.shape[1:] == want[1:] and 0 < arr.shape[0] < want[0]:
        log.warning(
            "input %r from %s: batch of %d rows padded to the calibration batch of %d by "
            "repeating rows (TensorRT calibrates every batch at the profile's OPT shape)",
            name, where, arr.shape[0], want[0],
        )
        idx = np.arange(want[0]) % arr.shape[0]
        return np.ascontiguousarray(arr[idx])
    from trtkld.data.specs import format_shape

    raise DataError(
        f"input {name!r} from {where}: shape {format_shape(arr.shape)}, expected the calibration "
        f"shape {format_shape(want)} (the first batch's shape, which sizes the device buffers "
        f"and the calibration profile)"
    )
