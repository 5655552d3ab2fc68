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
never calls ``get_batch``. ``get_batch`` serves the data only to TensorRT's own calibration,
``method="tensorrt"`` (for comparison; its cache is written next to ours by
``write_calibration_cache``); for any other method it refuses, so TensorRT never calibrates by
itself behind our back.

TensorRT swallows exceptions raised in these callbacks (any ``BaseException``), so each
callback records its error, logs it loudly and returns ``None``; :meth:`check` raises it after
the build. Collaborators: :mod:`.bases`, :mod:`.feeder`, :mod:`.cache_policy`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from trtkld.errors import TrtkldError
from trtkld.trt import bases, cache_policy
from trtkld.trt.cache_policy import CacheMaker, CachePolicy, CacheRequest
from trtkld.trt.device import DeviceBackend
from trtkld.trt.feeder import BatchFeeder, LazyCalibrationData

log = logging.getLogger("trtkld.trt")

BUILTIN_METHOD = "tensorrt"  # TensorRT's own calibration, for comparison
COLLECTORS = ("onnxruntime", "tensorrt")

algorithm_of_base = bases.algorithm_of_base


class CalibrationError(TrtkldError, RuntimeError):
    """Something failed inside a TensorRT calibrator callback, or calibration was incomplete."""


def _backend_module():
    from trtkld.trt import _backend

    return _backend


def calibrator_class(base_class: type) -> type:
    """The KLDCalibrator subclass built on ``base_class`` (one class per base, cached)."""
    return bases.derived_class(KLDCalibrator, base_class)


def _method_options(method: str, given: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The options ``method`` takes from ``given``, as its cache's sidecar records them.

    Checked by the method registry now (SearchError for an option no method takes or a bad
    value), not deep inside TensorRT's callback; options only other methods take are dropped,
    as ``trtkld.calibrate`` does, so the reuse check compares like with like.
    """
    if not given or method == BUILTIN_METHOD:
        return dict(given or {})
    from trtkld.search.registry import options_for_methods

    return dict(options_for_methods(dict(given)).get(method, {}))


def _available_methods() -> list[str]:
    from trtkld.search import available_methods

    return list(available_methods())


class KLDCalibrator:
    """TensorRT INT8 calibrator using trtkld's histograms and threshold search.

    A thin shell around plain collaborators: the TensorRT callbacks, error recording and
    :meth:`check`. :class:`~trtkld.trt.feeder.BatchFeeder` serves batches,
    :class:`~trtkld.trt.cache_policy.CacheMaker` / ``CachePolicy`` reuse or make our cache.

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
            its algorithm goes into the cache header.
        collector: ``"onnxruntime"`` (CPU, ONNX names) or ``"tensorrt"`` (FP32 TensorRT engine
            with every tensor as output, histograms on the GPU, TensorRT's names; call
            :meth:`prepare` before the build, as that is a TensorRT build of its own).
        trt_version: version for the cache header (default: the running TensorRT's).
        device_backend: a :class:`~trtkld.trt.device.DeviceBackend` (default: pycuda, created
            here, before any build, when ``method="tensorrt"`` or ``collector="tensorrt"``
            needs device memory, and released by :meth:`close` or at exit; an injected one
            is left open).
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
        if cls._trt_base is None:  # KLDCalibrator, or a user subclass not yet on a base
            sub = bases.derived_class(cls, bases.resolve_base(base_class))
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
        self.errors: list[tuple[str, BaseException]] = []
        self._closed = False
        self._device = device_backend
        self._own_backend = False

        methods = _available_methods() + [BUILTIN_METHOD]
        if method not in methods:
            raise TrtkldError(f"unknown method {method!r}; choose from {', '.join(methods)}")
        if collector not in COLLECTORS:
            raise TrtkldError(
                f"unknown collector {collector!r}; choose from {', '.join(COLLECTORS)}"
            )
        self.method = method
        self.collector = collector
        self.algorithm = bases.algorithm_of_base(base)
        self.cache_file = Path(cache_file)
        self.tensorrt_cache_file = cache_policy.tensorrt_cache_file(
            self.cache_file, tensorrt_cache_file
        )
        self.onnx = None if onnx is None else Path(onnx)
        self.trt_version = trt_version or _backend_module().tensorrt_version()
        self.search_options = _method_options(method, search_options)
        self.include = list(include) if include else None
        self.exclude = list(exclude) if exclude else None
        self.quiet = quiet

        self.data = LazyCalibrationData(
            data, self.onnx, batch_size=batch_size, preprocess=preprocess
        )
        self.cache = CacheMaker(
            CacheRequest(
                cache_file=self.cache_file, trt_version=self.trt_version,
                algorithm=self.algorithm, method=method, options=self.search_options,
                collector=collector, onnx=self.onnx,
            ),
            CachePolicy(force=force, data_fingerprint=self._data_fingerprint),
            data=self._require_data,
            histograms=self._gpu_histograms if collector == "tensorrt" else None,
            include=self.include, exclude=self.exclude, quiet=quiet,
        )
        self.feeder = BatchFeeder(self.data, self._backend)
        self.request = self.cache.request

        self.get_batch_calls = 0
        self.read_cache_calls = 0
        self.served_our_cache = False
        self.tensorrt_wrote_cache = False
        if self._device is None and (method == BUILTIN_METHOD or collector == "tensorrt"):
            # Device memory is needed: get it now, before any build, never inside a callback.
            self._device = _backend_module().PycudaBackend()
            self._own_backend = True

    # ------------------------------------------------------------------ state, for callers
    @property
    def device_backend(self) -> Optional[DeviceBackend]:
        """The device backend in use (None if this calibrator needs no device memory)."""
        return self._device

    @property
    def cache_status(self) -> Optional[str]:
        """``"reused"`` or ``"generated"`` once our cache was prepared."""
        return self.cache.status

    @property
    def regeneration_reason(self) -> Optional[str]:
        return self.cache.reason

    @property
    def batches_served(self) -> int:
        return self.feeder.served

    @property
    def batches_available(self) -> Optional[int]:
        return self.feeder.available

    @property
    def end_of_data(self) -> bool:
        return self.feeder.exhausted

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
            self.feeder.close()
        finally:
            if self._own_backend and self._device is not None:
                self._device.close()
                self._device = None

    def _backend(self) -> DeviceBackend:
        if self._device is None:
            raise CalibrationError(
                "no device backend: this calibrator needs device memory only for "
                "method='tensorrt' or collector='tensorrt' (or pass device_backend=...)"
            )
        return self._device

    # ------------------------------------------------------------------ data and profiles
    def _data_fingerprint(self) -> Optional[dict]:
        """What the given data are (for the cache's provenance check); None without data."""
        if not self.data.given:
            return None
        data = self._require_data()
        return data.fingerprint() if hasattr(data, "fingerprint") else None

    def _require_data(self) -> Any:
        return self.data.require(
            f"no calibration data was given, and the cache {self.cache_file} cannot be used as "
            f"it is; pass data (e.g. --data DIR)"
        )

    def _gpu_histograms(self, data: Any) -> Any:
        from trtkld.search import DEFAULT_BINS
        from trtkld.trt.gpu_collect import collect_histograms_tensorrt

        return collect_histograms_tensorrt(
            self.onnx, data, num_bins=DEFAULT_BINS[self.method], backend=self._backend(),
            include=self.include, exclude=self.exclude, quiet=self.quiet,
        )

    def calibration_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> the shape every calibration batch has (the calibration profile's OPT)."""
        self._require_data()
        return self.data.calibration_shapes()

    def set_calibration_profile(self, builder: Any, network: Any, config: Any) -> bool:
        """Give a network with runtime dimensions its calibration profile; False if static.

        The calibration profile has opt = max = :meth:`calibration_shapes` (what the device
        buffers hold), and min batch 1 for a runtime batch axis. It is separate from the build
        profiles, which decide the shapes the engine accepts: only if ``config`` has no
        optimization profile yet is it also added as the build profile (an engine then takes
        at most the calibration batch; :func:`trtkld.trt.engine.configure_int8` builds one
        from MIN/OPT/MAX options). Takes TensorRT's own builder objects.
        """
        from trtkld.trt import engine

        profile = engine.calibration_profile(builder, network, self.calibration_shapes())
        if profile is None:
            return False
        if int(config.num_optimization_profiles) == 0:
            config.add_optimization_profile(profile)
        config.set_calibration_profile(profile)
        return True

    def prepare(self) -> bytes:
        """Reuse or (re)generate our cache now; its bytes. Call it before the build.

        ``read_calibration_cache`` calls it too, but inside TensorRT's callback errors are
        only recorded, and ``collector="tensorrt"`` (a TensorRT build) is refused there.
        """
        if self.method == BUILTIN_METHOD:
            raise CalibrationError(
                "method 'tensorrt' uses TensorRT's own cache; there is nothing to prepare"
            )
        return self.cache.get()

    # ------------------------------------------------------------------ errors
    def _record(self, where: str, exc: BaseException) -> None:
        self.errors.append((where, exc))
        log.error(
            "%s failed: %s: %s -- TensorRT swallows exceptions raised in calibrator callbacks "
            "and would go on without our cache; calibration is stopped and calib.check() will "
            "raise it",
            where, type(exc).__name__, exc,
        )

    def check(self) -> None:
        """Raise the first error recorded in a callback, or if calibration was incomplete.

        Run it after ``build_serialized_network``. A ``KeyboardInterrupt`` (or other
        ``BaseException``) caught in a callback is raised again as it was. Also fails when
        TensorRT asked for batches but stopped before the end of the data.
        """
        if self.errors:
            where, exc = self.errors[0]
            more = f" (and {len(self.errors) - 1} later error(s))" if len(self.errors) > 1 else ""
            if isinstance(exc, TrtkldError) or not isinstance(exc, Exception):
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

    def get_batch_size(self) -> int:
        """Rows per batch (ignored by TensorRT for explicit-batch networks)."""
        shapes = self.data.known_shapes
        if shapes:
            first = next(iter(shapes.values()))
            if first:
                return int(first[0])
        return 1

    def get_batch(self, names: Sequence[str], *_: Any) -> Optional[list[int]]:
        """Device pointers of the next batch, in the order of ``names``; ``None`` at the end.

        Only ``method="tensorrt"`` serves batches: for any other method a call means TensorRT
        is about to calibrate by itself (it rejected our cache, or none was handed over), which
        would put TensorRT's scales in the engine instead of the method's.
        """
        self.get_batch_calls += 1
        if self.errors:
            return None
        try:
            if self._closed:
                raise CalibrationError("get_batch called on a closed calibrator")
            if self.method != BUILTIN_METHOD:
                handed = (
                    f"read_calibration_cache() returned our cache {self.cache_file} (header "
                    f"TRT-{self.request.version_number}-{self.algorithm}): TensorRT rejected it"
                    if self.served_our_cache
                    else "no cache of ours was handed to TensorRT"
                )
                raise CalibrationError(
                    f"TensorRT asked for calibration batches, but method {self.method!r} must "
                    f"calibrate from our cache and never lets TensorRT calibrate by itself; "
                    f"{handed}. Check the TensorRT log above"
                )
            return self.feeder.next_pointers(names)
        except BaseException as exc:  # noqa: B036 - TensorRT would swallow it; check() re-raises
            self._record("get_batch", exc)
            return None

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
            if self.collector == "tensorrt" and self.cache.would_generate():
                raise CalibrationError(
                    "collector 'tensorrt' builds its own TensorRT engine to collect histograms, "
                    "which cannot run inside TensorRT's read_calibration_cache(): call "
                    "calib.prepare() before build_serialized_network (`trtkld build` and "
                    "trtkld.trt.engine.build_int8_engine do), or use collector='onnxruntime'"
                )
            data = self.prepare()
        except BaseException as exc:  # noqa: B036 - TensorRT would swallow it; check() re-raises
            self._record("read_calibration_cache", exc)
            return None
        self.served_our_cache = True
        return data

    def write_calibration_cache(self, cache: Any) -> None:
        """Store TensorRT's own cache under a separate name; ours is never overwritten."""
        try:
            from trtkld.cache.sidecar import atomic_write_bytes

            data = bytes(cache)
            atomic_write_bytes(self.tensorrt_cache_file, data)
            self.tensorrt_wrote_cache = True
            ours = self.cache.cache_bytes
            log.info(
                "TensorRT wrote its calibration cache to %s%s (ours, %s, is unchanged); compare "
                "them with: trtkld diff %s %s",
                self.tensorrt_cache_file, " (identical to ours)" if data == ours else "",
                self.cache_file, self.cache_file, self.tensorrt_cache_file,
            )
        except BaseException as exc:  # noqa: B036 - TensorRT would swallow it; check() re-raises
            self._record("write_calibration_cache", exc)
