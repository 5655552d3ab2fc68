"""The ``tensorrt`` histogram collector: activations stay on the device, only bins come back.

Two passes over the data, as the CPU pipeline does:

1. run the FP32 all-outputs engine on each batch and reduce, on the device, every tensor's
   finite min/max/absmax and NaN/+Inf/-Inf counts (:data:`kernels.STATS_LEN` integers each);
2. with ``R`` = that absmax, run the engine again and accumulate each tensor's |x| histogram on
   the device with the shared binning rule; copy the integer bins back once at the end.

The engine runner and the device backend are injected (:class:`EngineRunner`,
:class:`~trtkld.trt.device.DeviceBackend`): the real ones are
:class:`trtkld.trt.engine.TensorRTEngineRunner` and ``PycudaBackend``; CPU tests drive the same
code with host buffers. Integer counters and max-reductions do not depend on launch order, so
the result is deterministic and equals the CPU histogram of the same values exactly.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Protocol

import numpy as np

from trtkld.errors import DataError, HistogramError
from trtkld.histogram import HistogramSet, TensorHistogram
from trtkld.histogram.stats import TensorStats
from trtkld.histogram.tensor import inverse_width
from trtkld.trt import kernels, profiles
from trtkld.trt.device import DeviceBackend, InputBuffers

log = logging.getLogger("trtkld.trt")

Shape = tuple[int, ...]
Profile = Mapping[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)


class EngineRunner(Protocol):
    """An engine whose float activations are all outputs (see ``TensorRTEngineRunner``)."""

    input_names: list[str]
    output_names: list[str]  # float32 outputs, network order

    def run(
        self, ptrs: Mapping[str, int], shapes: Mapping[str, Shape]
    ) -> dict[str, tuple[int, int]]:
        """Run inputs already on the device; ``{output: (device ptr, element count)}``."""

    def close(self) -> None: ...


RunnerFactory = Callable[[str, Profile, DeviceBackend], EngineRunner]


def decode_stats(raw: np.ndarray) -> TensorStats:
    """TensorStats from one tensor's ``kernels.STATS_LEN`` uint64 device counters."""
    raw = np.asarray(raw, dtype=np.uint64)
    num_finite = int(raw[kernels.STATS_FINITE])
    counts = dict(
        num_nan=int(raw[kernels.STATS_NAN]),
        num_posinf=int(raw[kernels.STATS_POSINF]),
        num_neginf=int(raw[kernels.STATS_NEGINF]),
    )
    if num_finite == 0:
        return TensorStats(num_finite=0, **counts)

    def f32(bits: int) -> float:
        return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])

    hi = f32(kernels.decode_order_key(int(raw[kernels.STATS_MAX_KEY])))
    lo = f32(kernels.decode_order_key(~int(raw[kernels.STATS_MIN_KEY_INV]) & 0xFFFFFFFF))
    absmax = f32(int(raw[kernels.STATS_ABSMAX_BITS]))
    if absmax != max(abs(lo), abs(hi)):  # the three reductions must agree
        raise HistogramError(
            f"device statistics are inconsistent: absmax {absmax!r}, min {lo!r}, max {hi!r}"
        )
    return TensorStats(min=lo, max=hi, absmax=absmax, num_finite=num_finite, **counts)


def _selected(names: Sequence[str], include, exclude) -> list[str]:
    def matches(name: str, patterns) -> bool:
        return any(name == p or re.fullmatch(p, name) for p in patterns)

    out = [n for n in names if not include or matches(n, include)]
    return [n for n in out if not exclude or not matches(n, exclude)]


def _collection_profile(onnx_path: str, batch_inputs: Mapping[str, np.ndarray]) -> Profile:
    """OPT = MAX = the first batch's shapes (batches are never larger); only runtime dims of
    the model's inputs vary, a runtime batch axis down to 1 (TensorRT's profile rules)."""
    from trtkld.data import input_specs_from_onnx

    network = {
        spec.name: tuple(d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape)
        for spec in input_specs_from_onnx(onnx_path)
    }
    shapes = {name: tuple(int(d) for d in arr.shape) for name, arr in batch_inputs.items()}
    return profiles.fixed_profile(network, shapes)


def collect_histograms_tensorrt(
    onnx_path: str | os.PathLike,
    data: Any,
    *,
    num_bins: int,
    backend: DeviceBackend,
    runner_factory: Optional[RunnerFactory] = None,
    include: Optional[Sequence[str]] = None,
    exclude: Optional[Sequence[str]] = None,
    quiet: bool = False,
    on_tensor: Optional[Callable[[str, np.ndarray], None]] = None,
) -> HistogramSet:
    """Two-pass |x| histograms of every float32 tensor of the TensorRT network, on the device.

    data: a :class:`trtkld.data.CalibrationData` (iterated twice). Returns a HistogramSet in
    network order (float32 inputs first), ``num_bins`` bins over ``[0, absmax]``.
    on_tensor: test hook, called in pass 2 with a host copy of every tensor (slow).
    """
    if runner_factory is None:
        from trtkld.trt.engine import TensorRTEngineRunner

        runner_factory = TensorRTEngineRunner
    first = next(iter(data), None)
    if first is None:
        raise DataError("calibration data holds no batch")
    profile = _collection_profile(os.fspath(onnx_path), first.inputs)
    buffers = InputBuffers(backend)
    handles: list[Any] = []
    runner = runner_factory(os.fspath(onnx_path), profile, backend)
    try:
        for name, arr in first.inputs.items():
            buffers.reserve(name, arr.nbytes)
        float_inputs = [n for n in runner.input_names if first.inputs[n].dtype == np.float32]
        names = _selected(float_inputs + list(runner.output_names), include, exclude)
        if not names:
            raise HistogramError(
                f"{os.fspath(onnx_path)}: no float32 tensor left to collect "
                f"(include={include}, exclude={exclude})"
            )

        def run(batch) -> dict[str, tuple[int, int]]:
            missing = [n for n in runner.input_names if n not in batch.inputs]
            if missing:
                raise DataError(
                    f"batch from {', '.join(batch.sources)} lacks network input(s) {missing}"
                )
            dtype_of = getattr(runner, "input_dtype", None)
            for n in runner.input_names if dtype_of is not None else ():
                if batch.inputs[n].dtype != dtype_of(n):
                    raise DataError(
                        f"input {n!r} from {', '.join(batch.sources[:3])}: dtype "
                        f"{batch.inputs[n].dtype}, the TensorRT engine expects {dtype_of(n)}"
                    )
            ptrs = {n: buffers.upload(n, batch.inputs[n]) for n in runner.input_names}
            shapes = {n: tuple(batch.inputs[n].shape) for n in runner.input_names}
            tensors = runner.run(ptrs, shapes)
            for n in float_inputs:
                tensors[n] = (ptrs[n], int(batch.inputs[n].size))
            return tensors

        stat_handles = {}
        for name in names:
            stat_handles[name] = backend.allocate(kernels.STATS_LEN * 8)
            handles.append(stat_handles[name])
            backend.memset_zero(stat_handles[name], kernels.STATS_LEN * 8)
        for batch in _progress(data, "pass 1/2 (absmax, GPU)", quiet):
            tensors = run(batch)
            for name in names:
                ptr, count = tensors[name]
                backend.stats(ptr, count, stat_handles[name])
        stats = {}
        for name in names:
            raw = np.zeros(kernels.STATS_LEN, dtype=np.uint64)
            backend.copy_dtoh(raw, stat_handles[name])
            stats[name] = decode_stats(raw)

        inv = {n: inverse_width(num_bins, stats[n].absmax, f"tensor {n!r}") for n in names}
        bin_handles = {}
        for name in names:
            if inv[name] is not None:  # all-zero / no finite value: counts stay zero (contract)
                bin_handles[name] = backend.allocate(num_bins * 8)
                handles.append(bin_handles[name])
                backend.memset_zero(bin_handles[name], num_bins * 8)
        for batch in _progress(data, "pass 2/2 (histograms, GPU)", quiet):
            tensors = run(batch)
            for name in bin_handles:
                ptr, count = tensors[name]
                backend.histogram(ptr, count, inv[name], num_bins, bin_handles[name])
            if on_tensor is not None:
                for name in names:
                    ptr, count = tensors[name]
                    on_tensor(name, _host_copy(backend, ptr, count))

        hists = HistogramSet()
        for name in names:
            counts = np.zeros(num_bins, dtype=np.uint64)
            if name in bin_handles:
                backend.copy_dtoh(counts, bin_handles[name])
            st = stats[name]
            if name in bin_handles and int(counts.sum()) != st.num_finite:
                raise HistogramError(
                    f"tensor {name!r}: pass 2 binned {int(counts.sum())} values, pass 1 counted "
                    f"{st.num_finite} finite ones; the data changed between passes"
                )
            hists.add(
                TensorHistogram(
                    name, hist_max=st.absmax, counts=counts.astype(np.int64), stats=st
                )
            )
            if st.num_nan or st.num_posinf or st.num_neginf:
                log.warning(
                    "tensor %r: %d NaN, %d +Inf, %d -Inf values were left out of its histogram",
                    name, st.num_nan, st.num_posinf, st.num_neginf,
                )
        return hists
    finally:
        for handle in handles:
            backend.free(handle)
        buffers.close()
        runner.close()


def _host_copy(backend: DeviceBackend, ptr: int, count: int) -> np.ndarray:
    """float32 copy of ``count`` values at a raw device pointer (test hook only)."""
    out = np.empty(count, dtype=np.float32)
    backend.copy_dtoh_ptr(out, ptr)
    return out


def _progress(iterable, desc: str, quiet: bool):
    if quiet:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit="batch", dynamic_ncols=True, leave=False)
