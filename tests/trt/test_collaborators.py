"""The calibrator's plain collaborators, without TensorRT (no fake ``tensorrt`` module either):
base-class selection (bases), batch serving (feeder), cache reuse (cache_policy).

Oracles: trtkld.data's own batches read back from the returned host pointers; the cache
header/sidecar written by the same writer as ``trtkld calibrate``; TensorRT's cache rules
(docs/trt-facts: the header's version and algorithm must match).
"""
from __future__ import annotations

import ctypes
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtkld.data import input_specs_from_onnx, open_data
from trtkld.errors import DataError, TrtkldError
from trtkld.trt import bases
from trtkld.trt.cache_policy import (
    CacheMaker,
    CachePolicy,
    CacheRequest,
    tensorrt_cache_file,
    write_calibration,
)
from trtkld.trt.device import HostBufferBackend
from trtkld.trt.feeder import BatchFeeder, LazyCalibrationData


@pytest.fixture
def model(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [x], [y])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    return str(path)


@pytest.fixture
def data(tmp_path, model):
    folder = tmp_path / "d"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        np.save(folder / f"x{i}.npy", (rng.standard_normal(3) * (i + 1)).astype(np.float32))
    return open_data(str(folder), input_specs_from_onnx(model), batch_size=2)


# ------------------------------------------------------------------------------ bases
class IInt8MinMaxCalibrator:  # a plain class with TensorRT's name: the MRO decides
    def __init__(self):
        self.base_ran = True


def test_derived_class_takes_the_algorithm_from_the_base_name():
    class Shell:
        _trt_base = None

    klass = bases.derived_class(Shell, IInt8MinMaxCalibrator)
    assert klass is bases.derived_class(Shell, IInt8MinMaxCalibrator)  # cached
    assert klass.__mro__[1:3] == (Shell, IInt8MinMaxCalibrator)
    assert klass._trt_base is IInt8MinMaxCalibrator
    assert bases.algorithm_of_base(klass) == "MinMaxCalibration"
    assert bases.algo_type_member("MinMaxCalibration") == "MINMAX_CALIBRATION"
    with pytest.raises(TrtkldError, match="derives from none of"):
        bases.derived_class(Shell, dict)


# ------------------------------------------------------------------------------ feeder
def test_feeder_serves_every_batch_in_name_order_then_ends(data, model):
    backend = HostBufferBackend()
    feeder = BatchFeeder(LazyCalibrationData(data, None), lambda: backend)
    expected = list(data)
    for batch in expected:
        (ptr,) = feeder.next_pointers(["x"])
        arr = batch.inputs["x"]
        want = arr if arr.shape[0] == 2 else np.concatenate([arr, arr])  # short last: padded
        assert ctypes.string_at(ptr, want.nbytes) == want.tobytes()
    assert feeder.next_pointers(["x"]) is None
    assert (feeder.served, feeder.available, feeder.exhausted) == (3, 3, True)
    feeder.close()
    assert backend.live_buffers == 0


def test_feeder_opens_a_source_with_the_model_specs(tmp_path, model):
    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"x{i}.npy", np.full(3, i, np.float32))
    cd = LazyCalibrationData(str(folder), model, batch_size=3)
    assert cd.known_shapes is None
    assert cd.calibration_shapes() == {"x": (3, 3)}
    with pytest.raises(DataError, match="no data, say so"):
        LazyCalibrationData(None, model).require("no data, say so")


def test_feeder_refuses_names_the_model_lacks(data):
    feeder = BatchFeeder(LazyCalibrationData(data, None), HostBufferBackend)
    with pytest.raises(DataError, match=r"\['nope'\]"):
        feeder.next_pointers(["x", "nope"])


# ------------------------------------------------------------------------------ cache policy
def _request(tmp_path, model, **kw):
    base = dict(cache_file=tmp_path / "m.cache", trt_version="10.9.0.34",
                algorithm="EntropyCalibration2", method="ppq", onnx=tmp_path / "m.onnx")
    base.update(kw)
    return CacheRequest(**base)


def test_policy_reuses_only_a_matching_cache(tmp_path, model, data):
    req = _request(tmp_path, model)
    policy = CachePolicy()
    assert policy.should_reuse(req) == (False, f"no cache file at {req.cache_file}")
    written = write_calibration(req, data, quiet=True)
    assert written == req.cache_file.read_bytes()
    assert written.startswith(b"TRT-100900-EntropyCalibration2\n")
    ok, why = policy.should_reuse(req)
    assert ok and "sidecar records method 'ppq'" in why
    cases = {
        "TensorRT 10.13.3": _request(tmp_path, model, trt_version="10.13.3"),
        "its algorithm is EntropyCalibration2": _request(tmp_path, model,
                                                         algorithm="MinMaxCalibration"),
        "made with method 'ppq', 'nvidia' was asked for": _request(tmp_path, model,
                                                                   method="nvidia"),
        "'tensorrt' was asked for": _request(tmp_path, model, collector="tensorrt"),
    }
    for reason, other in cases.items():
        ok, why = policy.should_reuse(other)
        assert not ok and reason in why, why
    assert CachePolicy(force=True).should_reuse(req) == (False, "regeneration was forced")
    req.cache_file.write_bytes(written + b"extra: 3c010204\n")  # edited by hand
    ok, why = policy.should_reuse(req)
    assert not ok and "changed after trtkld wrote it" in why


@pytest.mark.parametrize("method, options", [("auto", {}), ("percentile", {"percentile": 99.9})])
def test_a_cache_just_written_is_reused_for_every_method(tmp_path, model, data, method,
                                                         options):
    """The sidecar records exactly the request's options, so the next build reuses the cache."""
    req = _request(tmp_path, model, method=method, options=options)
    written = write_calibration(req, data, quiet=True)
    ok, why = CachePolicy().should_reuse(req)
    assert ok, why
    assert written == req.cache_file.read_bytes()


def test_policy_can_be_extended_with_a_check(tmp_path, model, data):
    class NoMondays(CachePolicy):
        def checks(self):
            return super().checks() + [lambda request, raw: "a custom rule says no"]

    req = _request(tmp_path, model)
    write_calibration(req, data, quiet=True)
    assert NoMondays().should_reuse(req) == (False, "a custom rule says no")


def test_maker_reuses_then_regenerates_with_the_reason(tmp_path, model, data):
    req = _request(tmp_path, model)
    asked = []

    def data_fn():
        asked.append(1)
        return data

    first = CacheMaker(req, CachePolicy(), data=data_fn, quiet=True)
    made = first.get()
    assert first.status == "generated" and first.reason.startswith("no cache file")
    again = CacheMaker(req, CachePolicy(), data=data_fn, quiet=True)
    assert not again.would_generate()
    assert again.get() == made and again.status == "reused" and len(asked) == 1
    meta = json.loads((tmp_path / "m.cache.trtkld.json").read_text())
    assert meta["method"] == "ppq" and meta["collector"] == "onnxruntime"


def test_tensorrt_cache_file_is_never_ours(tmp_path):
    assert tensorrt_cache_file(tmp_path / "m.cache", None) == tmp_path / "m.tensorrt.cache"
    with pytest.raises(TrtkldError, match="must never overwrite ours"):
        tensorrt_cache_file(tmp_path / "m.cache", tmp_path / "m.cache")


# ------------------------------------------------------------------------------ API surface list
def test_every_tensorrt_attribute_in_the_source_is_in_the_api_list():
    """The real-bindings API-surface check covers what trtkld.trt reads from ``trt.`` directly."""
    import re
    from pathlib import Path

    from trtkld.trt import _backend

    listed = set(_backend.TENSORRT_API) | set(_backend.OPTIONAL_TENSORRT_API)
    internal = {"calibrator", "engine", "device", "kernels", "gpu_collect", "profiles", "bases",
                "feeder", "cache_policy"}
    used = set()
    for path in Path(_backend.__file__).parent.glob("*.py"):
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        for chain in re.findall(r"(?<![\w.])trt\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", code):
            if chain.split(".")[0] in internal or chain.startswith("_"):
                continue
            used.add(chain)
    assert used, "no trt.X use found: the scan is broken"
    missing = sorted(c for c in used
                     if not any(item == c or item.startswith(c + ".") or c.startswith(item + ".")
                                for item in listed))
    assert missing == [], f"add to _backend.TENSORRT_API: {missing}"
