"""KLDCalibrator's protocol with TensorRT, on CPU: a fake ``tensorrt`` module (tests/helpers/
trt_fakes.py) supplies the base classes, HostBufferBackend (host memory) stands in for pycuda.

Oracles: the batches come from trtkld.data itself (iterated independently) and the bytes at the
returned pointers are read back with ctypes; generated caches are compared with
``trtkld.pipeline.calibrate`` run directly on the same data.
"""
from __future__ import annotations

import ctypes
import json
import logging
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers.trt_fakes import CalibrationAlgoType, make_fake_tensorrt
from trtkld.cache import parse_cache
from trtkld.data import input_specs_from_onnx, open_data
from trtkld.errors import DataError, TensorRTUnavailableError, TrtkldError
from trtkld.pipeline import calibrate
from trtkld.trt.calibrator import CalibrationError, KLDCalibrator, calibrator_class
from trtkld.trt.device import HostBufferBackend

TRT_VERSION = "10.9.0.34"
ALGO = CalibrationAlgoType


@pytest.fixture
def fake_trt(monkeypatch):
    trt = make_fake_tensorrt(TRT_VERSION)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def _two_input_model(path) -> str:
    """a [N,2,3] -> Relu(a * 2) ; b [N,L] -> Tanh(b); dynamic batch (and L)."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2, 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "L"])
    ya = helper.make_tensor_value_info("ya", TensorProto.FLOAT, ["N", 2, 3])
    yb = helper.make_tensor_value_info("yb", TensorProto.FLOAT, ["N", "L"])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Mul", ["a", "two"], ["a2"], name="mul"),
        helper.make_node("Relu", ["a2"], ["ya"], name="relu"),
        helper.make_node("Tanh", ["b"], ["yb"], name="tanh"),
    ]
    graph = helper.make_graph(nodes, "two_inputs", [a, b], [ya, yb], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def model(tmp_path):
    return _two_input_model(tmp_path / "two.onnx")


def _write_npz(folder, n: int, *, b_len=lambda i: 4, seed: int = 0) -> str:
    """``n`` .npz samples keyed by input name, values of several magnitudes."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        np.savez(
            folder / f"s{i:02d}.npz",
            a=(rng.standard_normal((2, 3)) * (i + 1)).astype(np.float32),
            b=(rng.standard_normal(b_len(i)) * 3).astype(np.float32),
        )
    return str(folder)


@pytest.fixture
def data(tmp_path, model):
    source = _write_npz(tmp_path / "data", 6)
    return open_data(source, input_specs_from_onnx(model), batch_size=2)


def _calib(data, model, cache, **kw):
    kw.setdefault("device_backend", HostBufferBackend())
    kw.setdefault("quiet", True)
    return KLDCalibrator(data, kw.pop("method", "ppq"), cache, model, **kw)


def _bytes_at(ptr: int, arr: np.ndarray) -> bytes:
    return ctypes.string_at(ptr, arr.nbytes)


# ----------------------------------------------------------------------------- construction


def test_default_base_is_entropy2_and_its_init_runs(fake_trt, data, model, tmp_path):
    calib = _calib(data, model, tmp_path / "m.cache")
    assert isinstance(calib, fake_trt.IInt8EntropyCalibrator2)
    assert isinstance(calib, KLDCalibrator)
    assert calib.base_initialised
    assert calib.algorithm == "EntropyCalibration2"
    assert calib.get_algorithm() is CalibrationAlgoType.ENTROPY_CALIBRATION_2
    assert calib.trt_version == TRT_VERSION


@pytest.mark.parametrize(
    "base_name, algorithm, algo",
    [
        ("IInt8EntropyCalibrator2", "EntropyCalibration2", ALGO.ENTROPY_CALIBRATION_2),
        ("IInt8EntropyCalibrator", "EntropyCalibration", ALGO.ENTROPY_CALIBRATION),
        ("IInt8MinMaxCalibrator", "MinMaxCalibration", ALGO.MINMAX_CALIBRATION),
    ],
)
def test_base_class_sets_algorithm_and_cache_header(
    fake_trt, data, model, tmp_path, base_name, algorithm, algo
):
    base = getattr(fake_trt, base_name)
    calib = _calib(data, model, tmp_path / "m.cache", base_class=base)
    assert isinstance(calib, base) and calib.base_initialised
    assert type(calib) is calibrator_class(base)
    assert calib.get_algorithm() is algo
    header = calib.read_calibration_cache().split(b"\n", 1)[0].decode()
    assert header == f"TRT-100900-{algorithm}"
    calib.check()


def test_unsupported_base_class_is_refused(fake_trt, data, model, tmp_path):
    class NotACalibrator:
        pass

    with pytest.raises(TrtkldError, match="IInt8EntropyCalibrator2"):
        _calib(data, model, tmp_path / "m.cache", base_class=NotACalibrator)


def test_without_tensorrt_the_error_says_how_to_get_it(monkeypatch, data, model, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(TensorRTUnavailableError) as err:
        KLDCalibrator(data, "ppq", tmp_path / "m.cache", model)
    text = str(err.value)
    assert "`tensorrt` cannot be imported" in text
    assert "nvcr.io/nvidia/tensorrt" in text and "pip install trtkld[tensorrt]" in text


def test_tensorrt_11_points_to_qdq_and_the_cache(monkeypatch, data, model, tmp_path):
    trt11 = make_fake_tensorrt("11.0.0.5", calibrators=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt11)
    with pytest.raises(TensorRTUnavailableError) as err:
        KLDCalibrator(data, "ppq", tmp_path / "m.cache", model)
    text = str(err.value)
    assert "TensorRT 11.0.0.5 has no INT8 calibrator API" in text
    assert "`trtkld qdq`" in text and "ModelOpt" in text and "calibration_cache_path" in text
    assert not (tmp_path / "m.cache").exists()


def test_tensorrt_11_base_class_injected_is_refused_too(monkeypatch, data, model, tmp_path):
    # A TensorRT 11 build that still exported a calibrator class by name must not slip through.
    trt11 = make_fake_tensorrt("11.1.0", calibrators=True)
    monkeypatch.setitem(sys.modules, "tensorrt", trt11)
    with pytest.raises(TensorRTUnavailableError, match="trtkld qdq"):
        _calib(data, model, tmp_path / "m.cache", base_class=trt11.IInt8EntropyCalibrator2)


def test_unknown_method_and_collector(fake_trt, data, model, tmp_path):
    with pytest.raises(TrtkldError, match="unknown method 'kl'"):
        _calib(data, model, tmp_path / "m.cache", method="kl")
    with pytest.raises(TrtkldError, match="unknown collector 'cuda'"):
        _calib(data, model, tmp_path / "m.cache", collector="cuda")


# ----------------------------------------------------------------------------- get_batch
# Batches are served only for method "tensorrt" (TensorRT calibrates on them); for the
# search methods get_batch refuses (tests/trt/test_calibrator_fixes.py).


def test_get_batch_pointer_order_count_and_bytes(fake_trt, data, model, tmp_path):
    backend = HostBufferBackend()
    calib = _calib(
        data, model, tmp_path / "m.cache", device_backend=backend, method="tensorrt"
    )
    expected = list(data)  # the oracle: trtkld.data's own batches, iterated separately
    assert len(expected) == 3
    names = ["b", "a"]  # TensorRT's order need not be the model's
    first_ptrs = None
    for batch in expected:
        ptrs = calib.get_batch(names)
        assert isinstance(ptrs, list) and len(ptrs) == 2
        for name, ptr in zip(names, ptrs):
            assert _bytes_at(ptr, batch.inputs[name]) == batch.inputs[name].tobytes()
        first_ptrs = first_ptrs or ptrs
        assert ptrs == first_ptrs  # one buffer per input, reused for every batch
    assert calib.get_batch(names) is None  # end of data
    assert calib.get_batch(names) is None
    assert calib.batches_served == 3 and calib.batches_available == 3 and calib.end_of_data
    assert backend.allocations == 2
    calib.check()


def test_check_fails_when_tensorrt_stops_early(fake_trt, data, model, tmp_path):
    calib = _calib(data, model, tmp_path / "m.cache", method="tensorrt")
    assert calib.get_batch(["a", "b"]) is not None
    with pytest.raises(CalibrationError, match="calibrated on 1 of 3 batch"):
        calib.check()


def test_unknown_input_name_returns_none_and_check_raises(fake_trt, data, model, tmp_path, caplog):
    calib = _calib(data, model, tmp_path / "m.cache", method="tensorrt")
    with caplog.at_level(logging.ERROR, logger="trtkld.trt"):
        assert calib.get_batch(["a", "zzz"]) is None
    assert "get_batch failed" in caplog.text and "calib.check() will raise" in caplog.text
    assert calib.get_batch(["a", "b"]) is None  # after an error: never serve more (or short)
    with pytest.raises(DataError, match=r"\['zzz'\]"):
        calib.check()


def test_missing_network_input_in_names(fake_trt, data, model, tmp_path):
    calib = _calib(data, model, tmp_path / "m.cache", method="tensorrt")
    assert calib.get_batch(["a"]) is None
    with pytest.raises(DataError, match=r"also has \['b'\]"):
        calib.check()


def test_batch_with_another_shape_is_an_error_naming_the_input(fake_trt, model, tmp_path):
    # Input b has a runtime length L: samples 0-1 have L=4, samples 2-3 L=5 -> the second batch
    # does not fit the calibration shape (the first batch's) that sizes the buffers.
    source = _write_npz(tmp_path / "var", 4, b_len=lambda i: 4 if i < 2 else 5)
    data = open_data(source, input_specs_from_onnx(model), batch_size=2)
    calib = _calib(data, model, tmp_path / "m.cache", method="tensorrt")
    assert calib.get_batch(["a", "b"]) is not None
    assert calib.get_batch(["a", "b"]) is None
    with pytest.raises(DataError) as err:
        calib.check()
    assert "input 'b'" in str(err.value) and "[2,5]" in str(err.value)
    assert "[2,4]" in str(err.value) and "s02.npz" in str(err.value)


def test_short_last_batch_is_padded_to_the_calibration_shape(fake_trt, model, tmp_path):
    source = _write_npz(tmp_path / "five", 5)
    data = open_data(source, input_specs_from_onnx(model), batch_size=2)
    batches = list(data)
    assert [b.size for b in batches] == [2, 2, 1]
    calib = _calib(data, model, tmp_path / "m.cache", method="tensorrt")
    for _ in range(2):
        calib.get_batch(["a", "b"])
    ptr_a, _ = calib.get_batch(["a", "b"])
    last = batches[-1].inputs["a"]
    assert _bytes_at(ptr_a, np.concatenate([last, last])) == np.concatenate([last, last]).tobytes()
    assert calib.get_batch(["a", "b"]) is None
    calib.check()


def test_data_error_while_reading_is_recorded(fake_trt, model, tmp_path):
    source = _write_npz(tmp_path / "bad", 4)
    data = open_data(source, input_specs_from_onnx(model), batch_size=2)
    (tmp_path / "bad" / "s03.npz").write_bytes(b"not an npz archive")
    calib = _calib(data, model, tmp_path / "m.cache", method="tensorrt")
    assert calib.get_batch(["a", "b"]) is not None
    assert calib.get_batch(["a", "b"]) is None
    with pytest.raises(DataError, match="s03.npz"):
        calib.check()


def test_buffers_are_freed_by_close_and_context_manager(fake_trt, data, model, tmp_path):
    backend = HostBufferBackend()
    with _calib(
        data, model, tmp_path / "m.cache", device_backend=backend, method="tensorrt"
    ) as calib:
        calib.get_batch(["a", "b"])
        assert backend.live_buffers == 2
    assert backend.live_buffers == 0
    calib.close()  # a second close is harmless
    assert backend.live_buffers == 0
    assert calib.get_batch(["a", "b"]) is None
    with pytest.raises(CalibrationError, match="closed calibrator"):
        calib.check()


# ----------------------------------------------------------------------------- the cache


def _expected_cache_bytes(model, data, method, trt_version, algorithm="EntropyCalibration2"):
    _, outcomes = calibrate(
        model, data, [method], trt_version=trt_version, algorithm=algorithm, quiet=True
    )
    return outcomes[method].cache.to_bytes()


def test_generated_cache_equals_the_pipeline_and_has_a_sidecar(
    fake_trt, data, model, tmp_path, caplog
):
    cache = tmp_path / "m.cache"
    calib = _calib(data, model, cache, method="nvidia")
    with caplog.at_level(logging.INFO, logger="trtkld.trt"):
        got = calib.read_calibration_cache()
    assert got == cache.read_bytes()
    assert got == _expected_cache_bytes(model, data, "nvidia", TRT_VERSION)
    assert f"regenerating calibration cache {cache}: no cache file at {cache}" in caplog.text
    meta = json.loads((tmp_path / "m.cache.trtkld.json").read_text())
    assert meta["method"] == "nvidia" and meta["collector"] == "onnxruntime"
    assert calib.cache_status == "generated" and calib.get_batch_calls == 0
    calib.check()


def test_valid_cache_is_reused_without_data(fake_trt, data, model, tmp_path, caplog):
    cache = tmp_path / "m.cache"
    first = _calib(data, model, cache).read_calibration_cache()
    stamp = cache.stat().st_mtime_ns
    again = _calib(None, model, cache)  # no data at all: reuse must not need it
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trtkld.trt"):
        assert again.read_calibration_cache() == first
    assert f"reusing calibration cache {cache}" in caplog.text
    assert "regenerating" not in caplog.text
    assert again.cache_status == "reused" and cache.stat().st_mtime_ns == stamp
    again.check()


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"trt_version": "10.13.3"}, "written for TensorRT 10.9.0 (header TRT-100900-"),
        ({"method": "modelopt"}, "made with method 'ppq', 'modelopt' was asked for"),
        ({"base": "IInt8MinMaxCalibrator"}, "its algorithm is EntropyCalibration2"),
        ({"search_options": {"percentile": 99.9}}, "made with search options {}"),
        ({"force": True}, "regeneration was forced"),
    ],
)
def test_mismatched_cache_is_regenerated_with_the_reason_logged(
    fake_trt, data, model, tmp_path, caplog, change, reason
):
    cache = tmp_path / "m.cache"
    kw = dict(change)
    first = {"method": "percentile"} if "search_options" in kw else {}
    _calib(data, model, cache, **first).read_calibration_cache()
    kw.update(first)
    if "base" in kw:
        kw["base_class"] = getattr(fake_trt, kw.pop("base"))
    calib = _calib(data, model, cache, **kw)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trtkld.trt"):
        got = calib.read_calibration_cache()
    assert "regenerating calibration cache" in caplog.text and reason in caplog.text
    assert "reusing" not in caplog.text
    assert calib.regeneration_reason and reason in calib.regeneration_reason
    parsed = parse_cache(got)
    assert parsed.version_number == (101303 if "trt_version" in kw else 100900)
    assert parsed.algorithm == calib.algorithm
    assert got == cache.read_bytes()
    calib.check()


def test_cache_without_sidecar_or_edited_is_never_silently_reused(
    fake_trt, data, model, tmp_path, caplog
):
    cache = tmp_path / "m.cache"
    good = _calib(data, model, cache).read_calibration_cache()
    (tmp_path / "m.cache.trtkld.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trtkld.trt"):
        assert _calib(data, model, cache).read_calibration_cache() == good
    assert "has no metadata file m.cache.trtkld.json" in caplog.text
    caplog.clear()
    lines = cache.read_text().splitlines()
    name = lines[1].rsplit(": ", 1)[0]
    cache.write_text("\n".join([lines[0], f"{name}: 3f800000", *lines[2:]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="trtkld.trt"):
        assert _calib(data, model, cache).read_calibration_cache() == good
    assert "changed after trtkld wrote it" in caplog.text


def test_mismatch_without_data_fails_loudly(fake_trt, data, model, tmp_path):
    cache = tmp_path / "m.cache"
    _calib(data, model, cache).read_calibration_cache()
    calib = _calib(None, model, cache, method="nvidia")
    assert calib.read_calibration_cache() is None
    with pytest.raises(DataError, match="no calibration data was given"):
        calib.check()


def test_get_batch_after_our_cache_means_tensorrt_rejected_it(fake_trt, data, model, tmp_path):
    calib = _calib(data, model, tmp_path / "m.cache")
    assert calib.read_calibration_cache() is not None
    assert calib.get_batch(["a", "b"]) is None
    with pytest.raises(CalibrationError, match="TensorRT rejected it"):
        calib.check()


def test_write_calibration_cache_goes_to_a_separate_file(fake_trt, data, model, tmp_path):
    cache = tmp_path / "m.cache"
    calib = _calib(data, model, cache)
    ours = calib.read_calibration_cache()
    theirs = b"TRT-100900-EntropyCalibration2\na: 3c010204\n"
    calib.write_calibration_cache(memoryview(theirs))
    assert (tmp_path / "m.tensorrt.cache").read_bytes() == theirs
    assert cache.read_bytes() == ours
    calib.check()


def test_builtin_method_lets_tensorrt_calibrate_on_the_data(fake_trt, data, model, tmp_path):
    cache = tmp_path / "m.cache"
    calib = _calib(data, model, cache, method="tensorrt")
    assert calib.read_calibration_cache() is None
    served = 0
    while calib.get_batch(["a", "b"]) is not None:
        served += 1
    assert served == 3
    calib.write_calibration_cache(b"TRT-100900-EntropyCalibration2\n")
    assert not cache.exists() and (tmp_path / "m.tensorrt.cache").exists()
    calib.check()


def test_tensorrt_cache_file_may_not_be_ours(fake_trt, data, model, tmp_path):
    with pytest.raises(TrtkldError, match="must never overwrite ours"):
        _calib(data, model, tmp_path / "m.cache", tensorrt_cache_file=tmp_path / "m.cache")


def test_demo_model_on_calib_data(fake_trt, tmp_path):
    """The real demo model and images: the cache covers the same tensors as the pipeline's."""
    from trtkld import demo

    model_path = str(demo.demo_model_path())
    files = sorted(demo.DEMO_CALIB_DIR.glob("*.jpg"))[:4]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    specs = input_specs_from_onnx(model_path)
    data = open_data(
        str(folder), specs, batch_size=2, preprocess=demo.preprocess_options(demo.DEMO_PREPROCESS)
    )
    backend = HostBufferBackend()
    # The calibrator opens the folder itself (a source, as `trtkld calibrate --data` takes).
    with _calib(
        str(folder), model_path, tmp_path / "demo.cache", device_backend=backend,
        batch_size=2, preprocess=demo.preprocess_options(demo.DEMO_PREPROCESS),
    ) as calib:
        got = calib.read_calibration_cache()
        assert got == _expected_cache_bytes(model_path, data, "ppq", TRT_VERSION)
        assert calib.calibration_shapes() == {"x": (2, 3, 224, 224)}
    assert len(parse_cache(got).scales) > 50


class _Input:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class _Network:
    """The two INetworkDefinition members calibration_profile reads."""

    def __init__(self, inputs):
        self._inputs = inputs
        self.num_inputs = len(inputs)

    def get_input(self, i):
        return self._inputs[i]


class _Recorder:
    """Stands in for IOptimizationProfile / IBuilder / IBuilderConfig: records the calls."""

    def __init__(self):
        self.calls = []
        self.num_optimization_profiles = 0

    def set_shape(self, name, lo, opt, hi):
        self.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    def create_optimization_profile(self):
        return self

    def add_optimization_profile(self, profile):
        self.calls.append(("add_optimization_profile", profile))
        self.num_optimization_profiles += 1

    def set_calibration_profile(self, profile):
        self.calls.append(("set_calibration_profile", profile))


def test_calibration_profile_is_the_batch_shape_for_runtime_dims(fake_trt, data, model, tmp_path):
    calib = _calib(data, model, tmp_path / "m.cache")
    builder, config = _Recorder(), _Recorder()
    network = _Network([_Input("a", (-1, 2, 3)), _Input("b", (-1, -1))])
    assert calib.set_calibration_profile(builder, network, config)
    assert builder.calls == [
        ("set_shape", "a", (1, 2, 3), (2, 2, 3), (2, 2, 3)),
        ("set_shape", "b", (1, 4), (2, 4), (2, 4)),
    ]
    assert config.calls == [
        ("add_optimization_profile", builder), ("set_calibration_profile", builder)
    ]
    static = _Network([_Input("a", (2, 2, 3)), _Input("b", (2, 4))])
    assert not calib.set_calibration_profile(_Recorder(), static, _Recorder())
    with pytest.raises(TrtkldError, match=r"calibration shape \[2, 4\] does not fit"):
        calib.set_calibration_profile(_Recorder(), _Network([_Input("a", (-1, 2, 3)),
                                                            _Input("b", (-1, 5))]), _Recorder())


def test_cache_from_trtkld_calibrate_is_reused_by_the_calibrator(fake_trt, model, tmp_path, caplog):
    """`trtkld calibrate` writes the sidecar too, so `trtkld build` need not calibrate again."""
    from trtkld.cli.main import main

    source = _write_npz(tmp_path / "cli_data", 6)
    cache = tmp_path / "cli.cache"
    assert main(["calibrate", model, "--data", source, "--batch-size", "2", "--method",
                 "nvidia", "--out", str(cache), "--trt-version", "10.9.0", "-q",
                 "--table", "none"]) == 0
    before = cache.read_bytes()
    calib = _calib(None, model, cache, method="nvidia")
    with caplog.at_level(logging.INFO, logger="trtkld.trt"):
        assert calib.read_calibration_cache() == before
    assert calib.cache_status == "reused", caplog.text
    # a different method must not reuse it
    other = _calib(open_data(source, input_specs_from_onnx(model), batch_size=2), model, cache,
                   method="ppq")
    other.read_calibration_cache()
    assert other.cache_status == "generated"
    assert "made with method 'nvidia', 'ppq' was asked for" in other.regeneration_reason
