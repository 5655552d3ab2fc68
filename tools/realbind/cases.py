"""KLDCalibrator driven through TensorRT's REAL bindings: run by pytest in a child process.

Started by tests/trt/test_real_bindings.py, one process per TensorRT version, with the
environment of ``harness.subprocess_env``: the bindings are imported as ``tensorrt`` before
trtkld, and ``harness.Driver`` calls the calibrator's C++ virtuals as TensorRT's builder does.
Not collected by the normal test run (the file name does not start with ``test_``).
"""
from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

_spec = importlib.util.spec_from_file_location("realbind_harness", Path(__file__).with_name(
    "harness.py"))
harness = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = harness
_spec.loader.exec_module(harness)

trt = harness.activate()  # before anything imports trtkld
MAJOR = harness.major_of(trt.__version__)
HAS_CALIBRATORS = MAJOR < 11

from trtkld.cache import parse_cache  # noqa: E402
from trtkld.data import input_specs_from_onnx, open_data  # noqa: E402
from trtkld.errors import TensorRTUnavailableError  # noqa: E402
from trtkld.pipeline import calibrate  # noqa: E402
from trtkld.trt import _backend  # noqa: E402
from trtkld.trt.calibrator import CalibrationError, KLDCalibrator  # noqa: E402
from trtkld.trt.device import HostBufferBackend  # noqa: E402

needs_calibrators = pytest.mark.skipif(
    not HAS_CALIBRATORS, reason=f"TensorRT {trt.__version__} has no INT8 calibrators"
)
BASES = {
    "IInt8EntropyCalibrator2": ("EntropyCalibration2", "ENTROPY_CALIBRATION_2"),
    "IInt8EntropyCalibrator": ("EntropyCalibration", "ENTROPY_CALIBRATION"),
    "IInt8MinMaxCalibrator": ("MinMaxCalibration", "MINMAX_CALIBRATION"),
}


@pytest.fixture(scope="module")
def driver():
    if not HAS_CALIBRATORS:
        pytest.skip(f"TensorRT {trt.__version__} has no calibrators to drive")
    d = harness.Driver()
    assert d.header_major == (8 if MAJOR == 8 else 10)
    return d


@pytest.fixture
def model(tmp_path):
    """a [N,2,3] -> Relu(a * 2); b [N,4] -> Tanh(b)."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2, 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])
    ya = helper.make_tensor_value_info("ya", TensorProto.FLOAT, ["N", 2, 3])
    yb = helper.make_tensor_value_info("yb", TensorProto.FLOAT, ["N", 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Mul", ["a", "two"], ["a2"], name="mul"),
        helper.make_node("Relu", ["a2"], ["ya"], name="relu"),
        helper.make_node("Tanh", ["b"], ["yb"], name="tanh"),
    ]
    graph = helper.make_graph(nodes, "two", [a, b], [ya, yb], initializer=[two])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "two.onnx"
    onnx.save(m, str(path))
    return str(path)


@pytest.fixture
def data(tmp_path, model):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # 3 batches of 2, the last one short (padded)
        np.savez(folder / f"s{i}.npz", a=(rng.standard_normal((2, 3)) * (i + 1)).astype("f4"),
                 b=(rng.standard_normal(4) * 3).astype("f4"))
    return open_data(str(folder), input_specs_from_onnx(model), batch_size=2)


def _calib(data, model, cache, **kw):
    kw.setdefault("device_backend", HostBufferBackend())
    return KLDCalibrator(data, kw.pop("method", "ppq"), cache, model, quiet=True, **kw)


# ------------------------------------------------------------------------------ cache
@needs_calibrators
@pytest.mark.parametrize("method", ["ppq", "nvidia"])
def test_cache_is_handed_over_byte_for_byte(driver, data, model, tmp_path, method):
    cache = tmp_path / "m.cache"
    calib = _calib(data, model, cache, method=method)
    got = driver.read_calibration_cache(calib)
    _, outcomes = calibrate(model, data, [method], trt_version=trt.__version__, quiet=True)
    assert got == outcomes[method].cache.to_bytes() == cache.read_bytes()
    assert got.startswith(f"TRT-{parse_cache(got).version_number}-EntropyCalibration2".encode())
    again = driver.read_calibration_cache(calib)  # TensorRT may ask twice: same bytes
    assert again == got
    calib.check()
    reused = _calib(None, model, cache, method=method)  # a second build reuses it, no data
    assert driver.read_calibration_cache(reused) == got and reused.cache_status == "reused"
    assert driver.get_batch(reused, ["a", "b"]) is None  # and never serves batches
    with pytest.raises(CalibrationError, match="TensorRT rejected it"):
        reused.check()


# ------------------------------------------------------------------------------ batches
@needs_calibrators
def test_batches_in_tensorrt_name_order_until_end_of_data(driver, data, model, tmp_path):
    backend = HostBufferBackend()
    calib = _calib(data, model, tmp_path / "m.cache", method="tensorrt", device_backend=backend)
    assert driver.read_calibration_cache(calib) is None  # TensorRT calibrates by itself
    expected = list(data)
    names = ["b", "a"]  # TensorRT's order, not the model's
    for batch in expected:
        ptrs = driver.get_batch(calib, names)
        assert ptrs is not None and len(ptrs) == 2
        for name, ptr in zip(names, ptrs):
            arr = batch.inputs[name]
            want = arr if arr.shape[0] == 2 else np.concatenate([arr, arr])  # padded last
            assert ctypes.string_at(ptr, want.nbytes) == want.tobytes()
    assert driver.get_batch(calib, names) is None  # end of data: getBatch returns false
    assert calib.batches_served == 3 and calib.end_of_data
    calib.check()
    calib.close()
    assert backend.live_buffers == 0


@needs_calibrators
def test_get_batch_size_is_the_calibration_batch(driver, data, model, tmp_path):
    calib = _calib(data, model, tmp_path / "m.cache", method="tensorrt")
    assert driver.get_batch_size(calib) == 1  # before any batch: shapes unknown
    driver.get_batch(calib, ["a", "b"])
    assert driver.get_batch_size(calib) == 2


@needs_calibrators
def test_write_calibration_cache_gets_a_memoryview(driver, data, model, tmp_path):
    seen = []

    class Spy(KLDCalibrator):
        def write_calibration_cache(self, cache):
            seen.append(type(cache))
            return super().write_calibration_cache(cache)

    cache = tmp_path / "m.cache"
    calib = Spy(data, "tensorrt", cache, model, device_backend=HostBufferBackend(), quiet=True)
    theirs = f"TRT-{calib.request.version_number}-EntropyCalibration2\na: 3c010204\n".encode()
    driver.write_calibration_cache(calib, theirs)
    assert seen == [memoryview]
    assert (tmp_path / "m.tensorrt.cache").read_bytes() == theirs and not cache.exists()
    calib.check()


# ------------------------------------------------------------------------------ errors
@needs_calibrators
def test_error_in_get_batch_is_recorded_and_raised_by_check(driver, data, model, tmp_path):
    calib = _calib(data, model, tmp_path / "m.cache", method="tensorrt")
    assert driver.get_batch(calib, ["a", "zzz"]) is None  # the trampoline got None, not a raise
    assert driver.get_batch(calib, ["a", "b"]) is None  # never more after an error
    with pytest.raises(Exception, match=r"\['zzz'\]"):
        calib.check()


@needs_calibrators
def test_keyboard_interrupt_while_making_our_cache(driver, data, model, tmp_path, monkeypatch):
    """Issue 10's finding: TensorRT must not calibrate by itself after an interrupt."""
    from trtkld.collect import OnnxRuntimeCollector

    def interrupted(self, batch):
        raise KeyboardInterrupt("Ctrl-C while collecting for ppq")

    monkeypatch.setattr(OnnxRuntimeCollector, "run", interrupted)
    calib = _calib(data, model, tmp_path / "m.cache")
    assert driver.read_calibration_cache(calib) is None  # null: "no cache"
    assert driver.get_batch(calib, ["a", "b"]) is None  # TensorRT's own calibration refused
    assert calib.batches_served == 0
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C while collecting for ppq"):
        calib.check()


# ------------------------------------------------------------------------------ bases
@needs_calibrators
@pytest.mark.parametrize("base_name", sorted(BASES))
def test_algorithm_per_base_class(driver, data, model, tmp_path, base_name):
    header_algo, member = BASES[base_name]
    base = getattr(trt, base_name)
    calib = _calib(data, model, tmp_path / "m.cache", base_class=base)
    assert isinstance(calib, base)
    want = int(getattr(trt.CalibrationAlgoType, member))
    assert driver.get_algorithm(calib) == want  # what the builder sees (C++ side)
    assert int(calib.get_algorithm()) == want  # what Python says agrees
    header = driver.read_calibration_cache(calib).split(b"\n", 1)[0].decode()
    assert header.endswith("-" + header_algo)
    calib.check()


# ------------------------------------------------------------------------------ TensorRT 11
@pytest.mark.skipif(HAS_CALIBRATORS, reason=f"TensorRT {trt.__version__} has calibrators")
def test_tensorrt_11_is_refused_with_the_pointer_to_qdq(data, model, tmp_path):
    assert not hasattr(trt, "IInt8EntropyCalibrator2")
    with pytest.raises(TensorRTUnavailableError) as err:
        KLDCalibrator(data, "ppq", tmp_path / "m.cache", model)
    text = str(err.value)
    assert f"TensorRT {trt.__version__} has no INT8 calibrator API" in text
    assert "`trtkld qdq`" in text


# ------------------------------------------------------------------------------ API surface
def _resolve(path: str):
    obj = trt
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_api_surface_trtkld_uses():
    missing = []
    for path in _backend.TENSORRT_API:
        try:
            _resolve(path)
        except AttributeError:
            missing.append(path)
    if HAS_CALIBRATORS:
        assert missing == [], f"TensorRT {trt.__version__} lacks {missing}"
    else:
        # What TensorRT 11 removed, and nothing else: the calibrator and implicit-INT8 API.
        removed = {p for p in missing if p.startswith(("IInt8", "CalibrationAlgoType",
                                                        "BuilderFlag.INT8", "BuilderFlag.FP16",
                                                        "IBuilderConfig.int8_calibrator",
                                                        "IBuilderConfig.set_calibration"))}
        assert removed, "TensorRT 11 still has the calibrator API?"
        others = sorted(set(missing) - removed)
        print(f"TensorRT {trt.__version__} also lacks: {others}")


@pytest.mark.skipif(MAJOR < 10, reason="bfloat16 came in TensorRT 9.0")
def test_optional_api_present_from_10():
    for path in _backend.OPTIONAL_TENSORRT_API:
        assert _resolve(path) is not None


# ------------------------------------------------------------------------------ h
@needs_calibrators
def test_network_creation_flags_and_logger(caplog):
    from trtkld.trt import engine

    flags = engine.network_creation_flags(trt)
    assert flags == (0 if MAJOR >= 10 else 1 << int(
        trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    logger = engine._Logger.get(trt)
    assert isinstance(logger, trt.ILogger)
    assert logger.min_severity == trt.ILogger.Severity.WARNING
    import logging

    with caplog.at_level(logging.DEBUG, logger="trtkld.trt"):
        for _ in range(1000):
            logger.log(trt.ILogger.Severity.VERBOSE, "verbose line")
        logger.log(trt.ILogger.Severity.INFO, "info line")
        logger.log(trt.ILogger.Severity.WARNING, "a warning")
        for i in range(50):
            logger.log(trt.ILogger.Severity.ERROR, f"error {i}")
    assert "verbose line" not in caplog.text and "info line" not in caplog.text
    assert "a warning" in caplog.text
    assert list(logger.errors) == [f"error {i}" for i in range(30, 50)]  # bounded
    assert not hasattr(logger, "messages")
    verbose = engine._Logger.get(trt, "verbose")
    assert verbose.min_severity == trt.ILogger.Severity.VERBOSE
