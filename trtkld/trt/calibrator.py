"""KLDCalibrator: a TensorRT INT8 calibrator whose scales come from trtkld's searches.

Usage (TensorRT 8.6 - 10.x)::

    calib = trtkld.KLDCalibrator(data, method="ppq", cache_file="model.cache", onnx="model.onnx")
    config.set_flag(trt.BuilderFlag.INT8)
    config.int8_calibrator = calib
    plan = builder.build_serialized_network(network, config)
    calib.check()        # re-raises anything that went wrong inside TensorRT's callbacks
    calib.close()        # frees the device buffers (or use `with`)

The class is built on the calibrator base class at construction time (default
``trt.IInt8EntropyCalibrator2``, resolved lazily so importing trtkld never needs TensorRT): the
instance is of a subclass of both :class:`KLDCalibrator` and that base, and the base
``__init__`` is called. The algorithm written in the cache header (and returned by
``get_algorithm()``) follows the base class.

TensorRT's builder calls ``read_calibration_cache()`` first: we return a cache we made (or
reuse) from our own histograms and search, so TensorRT skips its built-in entropy search and
never calls ``get_batch``. ``get_batch`` serves the same data to TensorRT's own calibration
when ``method="tensorrt"`` asks for it (for comparison; its cache is written next to ours by
``write_calibration_cache``).

TensorRT swallows exceptions raised in these callbacks, so each callback records its error,
logs it loudly and returns ``None``; :meth:`check` raises it after the build.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from trtkld.cache import sidecar as cachemeta
from trtkld.errors import DataError, TrtkldError
from trtkld.trt.device import DeviceBackend, InputBuffers

log = logging.getLogger("trtkld.trt")

BUILTIN_METHOD = "tensorrt"  # TensorRT's own calibration, for comparison
COLLECTORS = ("onnxruntime", "tensorrt")


class CalibrationError(TrtkldError, RuntimeError):
    """Something failed inside a TensorRT calibrator callback, or calibration was incomplete."""


def _backend_module():
    from trtkld.trt import _backend

    return _backend


def _engine_module():
    from trtkld.trt import engine

    return engine


def algorithm_of_base(base: type) -> str:
    """Cache header algorithm for a calibrator base class, from the TensorRT class in its MRO."""
    table = _backend_module().CALIBRATOR_ALGORITHMS
    for klass in base.__mro__:
        if klass.__name__ in table:
            return table[klass.__name__][0]
    raise TrtkldError(
        f"calibrator base class {base.__module__}.{base.__qualname__} derives from none of "
        f"{', '.join('trt.' + n for n in table)}; the cache algorithm cannot be chosen "
        f"(IInt8LegacyCalibrator is not supported)"
    )


_CLASS_CACHE: dict[type, type] = {}


def calibrator_class(base_class: type) -> type:
    """The KLDCalibrator subclass built on ``base_class`` (one class per base, cached)."""
    klass = _CLASS_CACHE.get(base_class)
    if klass is None:
        algorithm_of_base(base_class)  # fail early for an unsupported base
        # type() picks the most derived metaclass (pybind11's for TensorRT's classes).
        klass = type(
            "KLDCalibrator",
            (KLDCalibrator, base_class),
            {"_trt_base": base_class, "__module__": __name__,
             "__qualname__": f"KLDCalibrator[{base_class.__name__}]"},
        )
        _CLASS_CACHE[base_class] = klass
    return klass


def _available_methods() -> list[str]:
    from trtkld.search import available_methods

    return list(available_methods())


class KLDCalibrator:
    """TensorRT INT8 calibrator using trtkld's histograms and threshold search.

    Args:
        data: a :class:`trtkld.data.CalibrationData`, or any source ``open_data`` accepts
            (image folder, .npy/.npz file or folder, ``module:function`` / callable; read with
            the ONNX model's input specs and ``batch_size``). ``None``: an existing valid cache
            is required.
        method: search method (``ppq``, ``nvidia``, ``modelopt``, ... see
            ``trtkld.search.available_methods()``), or ``"tensorrt"`` to let TensorRT run its
            own calibration on the same data (its cache goes to ``tensorrt_cache_file``).
        cache_file: our calibration cache; reused only if its header matches the running
            TensorRT version and this calibrator's algorithm AND its sidecar
            ``<cache>.trtkld.json`` records the same method, options, collector and trtkld
            version. Otherwise regenerated (atomically) with a log line saying why.
        onnx: the ONNX model (needed to generate the cache and to read input specs).
        base_class: calibrator base (default ``trt.IInt8EntropyCalibrator2``);
            ``trt.IInt8EntropyCalibrator`` and ``trt.IInt8MinMaxCalibrator`` also work.
        collector: ``"onnxruntime"`` (CPU, ONNX names) or ``"tensorrt"`` (FP32 TensorRT engine
            with every tensor as output, histograms on the GPU, TensorRT's names).
        trt_version: version for the cache header (default: the running TensorRT's).
        device_backend: a :class:`~trtkld.trt.device.DeviceBackend` (default: pycuda, created
            on first use and closed by :meth:`close`; an injected one is left open).
        batch_size: batch size when ``data`` is a source.
        preprocess: image options when ``data`` is an image folder: a
            :class:`trtkld.data.PreprocessOptions` or a preset name (``"imagenet"``,
            ``"caffe"``, ...); default: resolved from the model input (ImageNet for float).
        search_options: extra keyword options for the search (recorded in the sidecar).
        include, exclude: tensor names/regexes to calibrate (as ``trtkld calibrate``).
        tensorrt_cache_file: where TensorRT's own cache goes (default ``model.tensorrt.cache``).
        force: regenerate the cache even if it could be reused.
        quiet: no progress bars.
    """

    _trt_base: Optional[type] = None

    def __new__(cls, *args: Any, base_class: Optional[type] = None, **kwargs: Any):
        if cls is KLDCalibrator:
            if base_class is None:
                base_class = _backend_module().default_calibrator_base()
            else:
                _refuse_tensorrt_11(base_class)
            sub = calibrator_class(base_class)
            return sub.__new__(sub, *args, **kwargs)
        # The base's __new__ takes no constructor arguments (pybind11 and object alike).
        return cls._trt_base.__new__(cls)  # type: ignore[union-attr]

    def __init__(
        self,
        data: Any = None,
        method: str = "ppq",
        cache_file: str | os.PathLike = "model.cache",
        onnx: Optional[str | os.PathLike] = "model.onnx",
        *,
        base_class: Optional[type] = None,
        collector: str = "onnxruntime",
        trt_version: Optional[str] = None,
        device_backend: Optional[DeviceBackend] = None,
        batch_size: Optional[int] = None,
        preprocess: Any = None,
        search_options: Optional[Mapping[str, Any]] = None,
        include: Optional[Sequence[str]] = None,
        exclude: Optional[Sequence[str]] = None,
        tensorrt_cache_file: Optional[str | os.PathLike] = None,
        force: bool = False,
        quiet: bool = False,
    ) -> None:
        base = type(self)._trt_base
        assert base is not None, "KLDCalibrator is instantiated through its base-class subclass"
        base.__init__(self)  # TensorRT's pybind11 base must be initialised, or it crashes
        self._closed = False
        self._buffers: Optional[InputBuffers] = None
        self._own_backend = device_backend is None
        self._device = device_backend
        self.errors: list[tuple[str, BaseException]] = []

        methods = _available_methods() + [BUILTIN_METHOD]
        if method not in methods:
            raise TrtkldError(f"unknown method {method!r}; choose from {', '.join(methods)}")
        if collector not in COLLECTORS:
            raise TrtkldError(
                f"unknown collector {collector!r}; choose from {', '.join(COLLECTORS)}"
            )
        self.method = method
        self.collector = collector
        self.algorithm = algorithm_of_base(base)
        self.cache_file = Path(cache_file)
        self.tensorrt_cache_file = Path(
            tensorrt_cache_file or cachemeta.tensorrt_cache_path(self.cache_file)
        )
        if self.tensorrt_cache_file.resolve() == self.cache_file.resolve():
            raise TrtkldError(
                f"tensorrt_cache_file {self.tensorrt_cache_file} is the cache file itself; "
                f"TensorRT's cache must never overwrite ours"
            )
        self.onnx = None if onnx is None else Path(onnx)
        self.trt_version = trt_version or _backend_module().tensorrt_version()
        from trtkld.cache import trt_version_number

        self._version_number = trt_version_number(self.trt_version)
        self.search_options = dict(search_options or {})
        self.include = list(include) if include else None
        self.exclude = list(exclude) if exclude else None
        self.force = force
        self.quiet = quiet
        self._batch_size = batch_size
        self._preprocess = preprocess
        self._data_arg = data
        self._data: Any = None
        self._specs: Optional[list] = None
        self._calib_shapes: Optional[dict[str, tuple[int, ...]]] = None

        self._iter: Any = None
        self.get_batch_calls = 0
        self.batches_served = 0
        self.batches_available: Optional[int] = None
        self.end_of_data = False
        self.read_cache_calls = 0
        self.served_our_cache = False
        self.tensorrt_wrote_cache = False
        self._cache_bytes: Optional[bytes] = None
        self.cache_status: Optional[str] = None  # "reused" | "generated"
        self.regeneration_reason: Optional[str] = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> KLDCalibrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the device buffers (and the pycuda backend if this calibrator created it)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._buffers is not None:
                self._buffers.close()
        finally:
            self._buffers = None
            if self._own_backend and self._device is not None:
                self._device.close()
                self._device = None

    def _backend(self) -> DeviceBackend:
        if self._device is None:
            self._device = _backend_module().PycudaBackend()
        return self._device

    # ------------------------------------------------------------------ data
    def _input_specs(self) -> list:
        if self._specs is None:
            data = self._data_arg
            if data is not None and hasattr(data, "specs"):
                self._specs = list(data.specs)
            elif self.onnx is not None:
                from trtkld.data import input_specs_from_onnx

                self._specs = input_specs_from_onnx(self.onnx)
            else:
                raise DataError("the calibrator needs `onnx` to know the network inputs")
        return self._specs

    def _require_data(self) -> Any:
        if self._data is None:
            data = self._data_arg
            if data is None:
                raise DataError(
                    f"no calibration data was given, and the cache {self.cache_file} cannot be "
                    f"used as it is; pass data (e.g. --data DIR)"
                )
            if hasattr(data, "specs") and hasattr(data, "__iter__") and hasattr(data, "__len__"):
                self._data = data
            else:
                from trtkld.data import PreprocessOptions, open_data

                pre = self._preprocess
                if isinstance(pre, str):
                    pre = PreprocessOptions.preset(pre)
                self._data = open_data(
                    data, self._input_specs(), batch_size=self._batch_size, preprocess=pre
                )
        return self._data

    def calibration_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> the shape every calibration batch has (the calibration profile's OPT).

        The first batch's shapes: a fixed-batch model fixes them, a dynamic one batches up to
        ``batch_size`` (a shorter last batch is padded by repeating rows, as for fixed batches).
        """
        if self._calib_shapes is None:
            first = next(iter(self._require_data()), None)
            if first is None:
                raise DataError("calibration data holds no batch")
            self._calib_shapes = {n: tuple(a.shape) for n, a in first.inputs.items()}
        return dict(self._calib_shapes)

    def set_calibration_profile(self, builder: Any, network: Any, config: Any) -> bool:
        """Give a network with runtime dimensions its calibration profile; False if static.

        Adds an optimization profile with opt = max = :meth:`calibration_shapes` (what the
        device buffers hold) and min batch 1, and makes it ``config``'s calibration profile,
        as TensorRT requires for dynamic shapes. Takes TensorRT's own builder objects.
        """
        profile = _engine_module().calibration_profile(
            builder, network, self.calibration_shapes()
        )
        if profile is None:
            return False
        config.add_optimization_profile(profile)
        config.set_calibration_profile(profile)
        return True

    def get_batch_size(self) -> int:
        """Rows per batch (ignored by TensorRT for explicit-batch networks)."""
        shapes = self._calib_shapes
        if shapes:
            first = next(iter(shapes.values()))
            if first:
                return int(first[0])
        return 1

    # ------------------------------------------------------------------ errors
    def _record(self, where: str, exc: BaseException) -> None:
        self.errors.append((where, exc))
        log.error(
            "%s failed: %s: %s -- TensorRT swallows exceptions raised in calibrator callbacks and "
            "would treat this as 'no data'; calibration is stopped and calib.check() will raise it",
            where, type(exc).__name__, exc,
        )

    def check(self) -> None:
        """Raise the first error recorded in a callback, or if calibration was incomplete.

        Run it after ``build_serialized_network``: it also fails when TensorRT asked for
        batches but stopped before the end of the data, and when TensorRT asked for batches
        although we had served it our cache (it rejected the cache).
        """
        if self.errors:
            where, exc = self.errors[0]
            more = f" (and {len(self.errors) - 1} later error(s))" if len(self.errors) > 1 else ""
            if isinstance(exc, TrtkldError):
                raise exc
            raise CalibrationError(f"{where} failed: {type(exc).__name__}: {exc}{more}") from exc
        if self.get_batch_calls and not self.end_of_data:
            raise CalibrationError(
                f"TensorRT calibrated on {self.batches_served} of {self.batches_available} "
                f"batch(es): it stopped asking before the end of the data"
            )

    # ------------------------------------------------------------------ TensorRT callbacks
    def get_algorithm(self) -> Any:
        """``trt.CalibrationAlgoType`` matching the cache header's algorithm."""
        return _backend_module().calibration_algo_type(self.algorithm)

    def get_batch(self, names: Sequence[str], *_: Any) -> Optional[list[int]]:
        """Device pointers of the next batch, in the order of ``names``; ``None`` at the end."""
        self.get_batch_calls += 1
        if self.errors:
            return None
        try:
            if self._closed:
                raise CalibrationError("get_batch called on a closed calibrator")
            if self.served_our_cache:
                raise CalibrationError(
                    f"TensorRT asked for calibration batches although read_calibration_cache() "
                    f"returned our cache {self.cache_file} (header TRT-{self._version_number}-"
                    f"{self.algorithm}): TensorRT rejected it, and would otherwise calibrate "
                    f"with its own search. Check the TensorRT log above"
                )
            if self._iter is None:
                data = self._require_data()
                self.calibration_shapes()
                self.batches_available = len(data)
                self._iter = iter(data)
            try:
                batch = next(self._iter)
            except StopIteration:
                self.end_of_data = True
                log.info("calibration data exhausted after %d batch(es)", self.batches_served)
                return None
            ptrs = self._upload(batch, list(names))
            self.batches_served += 1
            return ptrs
        except Exception as exc:
            self._record("get_batch", exc)
            return None

    def _upload(self, batch: Any, names: list[str]) -> list[int]:
        specs = {s.name: s for s in self._input_specs()}
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
                f"the network and {self.onnx} differ"
            )
        if self._buffers is None:
            self._buffers = InputBuffers(self._backend())
            for name, shape in self.calibration_shapes().items():
                nbytes = int(np.prod(shape)) * specs[name].dtype.itemsize
                self._buffers.reserve(name, nbytes)
        ptrs = []
        for name in names:
            if name not in batch.inputs:
                raise DataError(f"batch from {where} has no input {name!r}")
            arr = batch.inputs[name]
            want = self._calib_shapes[name]  # type: ignore[index]
            if arr.dtype != specs[name].dtype:
                raise DataError(
                    f"input {name!r} from {where}: dtype {arr.dtype}, the network expects "
                    f"{specs[name].dtype}"
                )
            if tuple(arr.shape) != want:
                arr = _pad_rows(arr, want, name, where)
            ptrs.append(self._buffers.upload(name, arr))
        return ptrs

    def read_calibration_cache(self) -> Optional[bytes]:
        """Our cache bytes (reused or freshly generated); ``None`` makes TensorRT calibrate."""
        self.read_cache_calls += 1
        if self.errors:
            return None
        if self.method == BUILTIN_METHOD:
            log.info(
                "method 'tensorrt': TensorRT runs its own calibration on the data; its cache "
                "will be written to %s", self.tensorrt_cache_file,
            )
            return None
        try:
            data = self.prepare()
        except Exception as exc:
            self._record("read_calibration_cache", exc)
            return None
        self.served_our_cache = True
        return data

    def write_calibration_cache(self, cache: Any) -> None:
        """Store TensorRT's own cache under a separate name; ours is never overwritten."""
        try:
            data = bytes(cache)
            cachemeta.atomic_write_bytes(self.tensorrt_cache_file, data)
            self.tensorrt_wrote_cache = True
            same = self._cache_bytes is not None and data == self._cache_bytes
            log.info(
                "TensorRT wrote its calibration cache to %s%s (ours, %s, is unchanged); compare "
                "them with: trtkld diff %s %s",
                self.tensorrt_cache_file, " (identical to ours)" if same else "",
                self.cache_file, self.cache_file, self.tensorrt_cache_file,
            )
        except Exception as exc:
            self._record("write_calibration_cache", exc)

    # ------------------------------------------------------------------ our cache
    def reuse_problem(self) -> Optional[str]:
        """Why ``cache_file`` cannot be reused as is; ``None`` if it can."""
        from trtkld.cache import format_trt_version, parse_cache

        path = self.cache_file
        if self.force:
            return "regeneration was forced"
        if not path.is_file():
            return f"no cache file at {path}"
        try:
            raw, meta = cachemeta.read_cache_and_metadata(path)  # one consistent pair
            cache = parse_cache(raw)
        except TrtkldError as exc:
            return f"it cannot be parsed ({exc})"
        if cache.version_number != self._version_number:
            try:
                written = format_trt_version(cache.version_number)
            except TrtkldError:
                written = str(cache.version_number)
            return (
                f"it was written for TensorRT {written} (header {cache.header}), but TensorRT "
                f"{self.trt_version} (TRT-{self._version_number}) is running"
            )
        if cache.algorithm != self.algorithm:
            return (
                f"its algorithm is {cache.algorithm} (header {cache.header}), but this "
                f"calibrator ({type(self)._trt_base.__name__}) uses {self.algorithm}"
            )
        from trtkld.pipeline import model_fingerprint

        # Reused only for this model and these data (when given: a rebuild from the cache
        # alone cannot check the data).
        model_sha = model_fingerprint(self.onnx) if self.onnx and self.onnx.is_file() else None
        data = self._require_data() if self._data_arg is not None else None
        return cachemeta.metadata_problem(
            meta, cache_file=path, cache_bytes=raw, method=self.method,
            options=self.search_options, collector=self.collector, model_sha256=model_sha,
            data_fingerprint=data.fingerprint() if hasattr(data, "fingerprint") else None,
        )

    def prepare(self) -> bytes:
        """Reuse or (re)generate our cache now; its bytes. Called by read_calibration_cache.

        Calling it before the build keeps the histogram collection (for
        ``collector="tensorrt"`` a second TensorRT build) out of TensorRT's callback.
        """
        if self._cache_bytes is not None:
            return self._cache_bytes
        if self.method == BUILTIN_METHOD:
            raise CalibrationError(
                "method 'tensorrt' uses TensorRT's own cache; there is nothing to prepare"
            )
        reason = self.reuse_problem()
        if reason is None:
            self._cache_bytes = self.cache_file.read_bytes()
            self.cache_status = "reused"
            log.info(
                "reusing calibration cache %s (TensorRT %s, %s, method %s)",
                self.cache_file, self.trt_version, self.algorithm, self.method,
            )
            return self._cache_bytes
        self.regeneration_reason = reason
        log.warning("regenerating calibration cache %s: %s", self.cache_file, reason)
        self._cache_bytes = self._generate()
        self.cache_status = "generated"
        return self._cache_bytes

    def _generate(self) -> bytes:
        from trtkld.pipeline import calibrate
        from trtkld.search import DEFAULT_BINS

        if self.onnx is None:
            raise DataError(f"generating {self.cache_file} needs the ONNX model (onnx=...)")
        data = self._require_data()
        histograms = None
        if self.collector == "tensorrt":
            from trtkld.trt.gpu_collect import collect_histograms_tensorrt

            histograms = collect_histograms_tensorrt(
                self.onnx, data, num_bins=DEFAULT_BINS[self.method], backend=self._backend(),
                include=self.include, exclude=self.exclude, quiet=self.quiet,
            )
        _, outcomes = calibrate(
            self.onnx, data, [self.method], trt_version=self.trt_version,
            algorithm=self.algorithm, include=self.include, exclude=self.exclude,
            quiet=self.quiet, histograms=histograms,
            method_options={self.method: self.search_options},
        )
        from trtkld.pipeline import cache_provenance

        cache = outcomes[self.method].cache
        written = cache.to_bytes()
        cachemeta.write_cache_and_metadata(
            self.cache_file, written,
            cachemeta.make_metadata(
                method=self.method, options=self.search_options, collector=self.collector,
                provenance=cache_provenance(self.onnx, data, trt_version=self.trt_version,
                                            tensorrt_installed=self.trt_version),
            ),
        )
        log.info(
            "wrote calibration cache %s: %d tensors, %s, method %s, collector %s",
            self.cache_file, len(cache.scales), cache.header, self.method, self.collector,
        )
        return written


def _pad_rows(arr: np.ndarray, want: tuple[int, ...], name: str, where: str) -> np.ndarray:
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


def _refuse_tensorrt_11(base_class: type) -> None:
    """An injected base class from a TensorRT without calibrators is refused like the default."""
    module = sys.modules.get(getattr(base_class, "__module__", "").split(".")[0])
    if module is not None and getattr(module, "__name__", "") == "tensorrt":
        _backend_module().require_calibrator_api(module)
