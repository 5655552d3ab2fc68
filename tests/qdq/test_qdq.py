"""trtkld.qdq: Q/DQ ONNX written by ONNX Runtime's quantizer from our scales.

Oracle for the small model: a plain numpy forward pass with fake quantization written from the
ONNX QuantizeLinear/DequantizeLinear definitions (round half to even, saturate to [-127, 127]).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from tests.helpers.small_model import (
    W_CONV,
    W_GEMM,
    W_MM,
    X,
    float_forward,
    maxabs_scales,
    qdq_forward,
    small_model,
)
from trtkld.errors import ModelError, QdqCoverageError
from trtkld.qdq import range_for_scale, write_qdq_model
from trtkld.qdq.scales import ort_symmetric_int8_scale


def run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def q_nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}




def test_small_model_matches_numpy_fake_quant_reference(tmp_path):
    scales = maxabs_scales(X)
    out = tmp_path / "q.onnx"
    summary = write_qdq_model(small_model(), scales, out)
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    # Placement: inputs of the three weighted ops; never their outputs, never Relu's.
    assert set(q_nodes(written)) == {"X", "f", "m"}
    assert set(summary.activations) == {"X", "f", "m"}
    assert summary.left_float == {} and summary.excluded_nodes == {}
    np.testing.assert_allclose(run(out, X), qdq_forward(X, scales), rtol=1e-5, atol=1e-5)
    # Fake quantization really happened (the model is not the FP32 one).
    assert np.abs(run(out, X) - float_forward(X)["Y"]).max() > 1e-4


def test_activation_scales_are_the_cache_scales_bit_for_bit(tmp_path):
    scales = maxabs_scales(X)
    out = tmp_path / "q.onnx"
    write_qdq_model(small_model(), scales, out)
    written = onnx.load(str(out))
    values = inits(written)
    for tensor, node in q_nodes(written).items():
        scale, zp = values[node.input[1]], values[node.input[2]]
        assert scale.dtype == np.float32 and scale.shape == ()
        assert scale.tobytes() == np.float32(scales[tensor]).tobytes(), tensor
        assert zp.dtype == np.int8 and zp == 0


def test_weights_are_per_channel_symmetric_by_max(tmp_path):
    out = tmp_path / "q.onnx"
    summary = write_qdq_model(small_model(), maxabs_scales(X), out)
    written = onnx.load(str(out))
    values = inits(written)
    dq = {n.output[0]: n for n in written.graph.node if n.op_type == "DequantizeLinear"}
    consumers = {n.name: n for n in written.graph.node}
    for node_name, slot, original, axis in (("conv", 1, W_CONV, 0), ("matmul", 1, W_MM, 1),
                                            ("gemm", 1, W_GEMM, 0)):
        node = dq[consumers[node_name].input[slot]]
        q, scale, zp = (values[i] for i in node.input)
        assert q.dtype == np.int8 and np.all(zp == 0)
        assert node.attribute[0].name == "axis" and node.attribute[0].i == axis
        moved = np.moveaxis(original, axis, 0).reshape(original.shape[axis], -1)
        expect = (np.abs(moved).max(axis=1) / np.float32(127)).astype(np.float32)
        np.testing.assert_array_equal(scale, expect)
        assert np.abs(q).max() == 127
        assert summary.weights[node.input[0]] == original.shape[axis]
    # Biases stay float (TensorRT fuses them; no INT32 DequantizeLinear).
    assert values["B"].dtype == np.float32 and values["Cg"].dtype == np.float32


def test_per_tensor_weights_when_asked(tmp_path):
    out = tmp_path / "q.onnx"
    write_qdq_model(small_model(), maxabs_scales(X), out, per_channel=False)
    values = inits(onnx.load(str(out)))
    assert all(v.shape == () for k, v in values.items() if k.endswith("_scale"))


def test_missing_scale_leaves_tensor_float_with_warning(tmp_path, caplog):
    scales = maxabs_scales(X)
    del scales["m"]
    out = tmp_path / "q.onnx"
    with caplog.at_level(logging.WARNING, logger="trtkld.qdq.writer"):
        summary = write_qdq_model(small_model(), scales, out)
    assert "m" in caplog.text and "no scale" in caplog.text
    assert summary.left_float == {"m": "no scale in the cache"}
    assert "gemm" in summary.excluded_nodes
    written = onnx.load(str(out))
    assert set(q_nodes(written)) == {"X", "f"}
    np.testing.assert_allclose(run(out, X), qdq_forward(X, scales, skip=("m",)),
                               rtol=1e-5, atol=1e-5)


def test_unusable_scales_are_left_float(tmp_path):
    scales = maxabs_scales(X)
    scales["f"] = np.float32(0.0)
    summary = write_qdq_model(small_model(), scales, tmp_path / "q.onnx")
    assert set(summary.left_float) == {"f"}
    assert set(summary.activations) == {"X", "m"}
    assert summary.quantized_nodes == ["conv", "gemm"]


def test_quantizing_under_half_of_the_weighted_ops_is_an_error(tmp_path):
    scales = maxabs_scales(X)
    scales["f"] = np.float32(0.0)
    scales["X"] = np.float32(np.nan)
    out = tmp_path / "q.onnx"
    with pytest.raises(QdqCoverageError) as info:
        write_qdq_model(small_model(), scales, out)
    message = str(info.value)
    assert "only 1 of 3 weighted ops (33%)" in message
    assert "conv (Conv): X: scale nan is not a finite positive normal float32" in message
    assert "matmul (MatMul): f: scale 0.0 is not" in message
    assert not out.exists()
    # Leaving tensors in float on purpose makes a partial model legitimate.
    summary = write_qdq_model(small_model(), maxabs_scales(X), out, keep_float=["X", "f"])
    assert summary.quantized_nodes == ["gemm"] and summary.kept_float == ["X", "f"]
    assert set(q_nodes(onnx.load(str(out)))) == {"m"}
    # ... but quantizing nothing at all never is.
    with pytest.raises(QdqCoverageError, match="no weighted op would be quantized"):
        write_qdq_model(small_model(), maxabs_scales(X), out, keep_float=["X", "f", "m"])
    with pytest.raises(QdqCoverageError, match="no weighted op would be quantized"):
        write_qdq_model(small_model(), {"unrelated": np.float32(0.1)}, out)
    with pytest.raises(QdqCoverageError, match="no ConvTranspose op with an activation input"):
        write_qdq_model(small_model(), maxabs_scales(X), out, op_types=["ConvTranspose"])


def test_output_bytes_are_deterministic(tmp_path):
    scales = maxabs_scales(X)
    write_qdq_model(small_model(), scales, tmp_path / "a.onnx")
    write_qdq_model(small_model(), scales, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_old_opset_is_converted_to_13(tmp_path):
    old = small_model(opset=11)
    src = tmp_path / "old.onnx"
    onnx.save(old, str(src))
    out = tmp_path / "q.onnx"
    summary = write_qdq_model(src, maxabs_scales(X), out)
    assert summary.converted_from_opset == 11
    written = onnx.load(str(out))
    assert [o.version for o in written.opset_import if o.domain in ("", "ai.onnx")] == [13]
    np.testing.assert_allclose(run(out, X), qdq_forward(X, maxabs_scales(X)), rtol=1e-5, atol=1e-5)


def _scale_without_exact_range() -> np.float32:
    """A scale for which no float32 range reproduces it through ORT (about 1 in 130 do)."""
    for s in np.linspace(0.01, 0.02, 4001, dtype=np.float32):
        if range_for_scale(s) is None:
            return np.float32(s)
    raise AssertionError("no such scale in the interval")


def test_scales_without_exact_range_go_through_overrides(tmp_path):
    scales = maxabs_scales(X)
    scales["f"] = _scale_without_exact_range()
    out = tmp_path / "q.onnx"
    summary = write_qdq_model(small_model(), scales, out)
    assert summary.scale_overrides == ["f"]
    written = onnx.load(str(out))
    scale = inits(written)[q_nodes(written)["f"].input[1]]
    assert scale.tobytes() == scales["f"].tobytes()


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False))
def test_range_for_scale_round_trips_through_ort(value):
    s = np.float32(value)
    amax = range_for_scale(s)
    if amax is not None:
        assert ort_symmetric_int8_scale(amax).tobytes() == s.tobytes()


def test_already_quantized_model_and_missing_file_are_clear_errors(tmp_path):
    out = tmp_path / "q.onnx"
    write_qdq_model(small_model(), maxabs_scales(X), out)
    with pytest.raises(ModelError, match="already contains QuantizeLinear"):
        write_qdq_model(out, maxabs_scales(X), tmp_path / "again.onnx")
    with pytest.raises(ModelError, match="not found"):
        write_qdq_model(tmp_path / "nope.onnx", {}, tmp_path / "x.onnx")


def test_demo_model_qdq_runs_in_ort_close_to_fp32(tmp_path, demo_model, demo_calib_dir,
                                                   demo_eval_dir):
    """The real PP-LCNet: max-calibrated on 2 calibration images, checked on 2 held-out ones."""
    import re

    from trtkld import demo
    from trtkld.collect import OnnxRuntimeCollector
    from trtkld.data import input_specs_from_onnx, open_data
    from trtkld.demo import preprocess_options
    from trtkld.qdq import quantizable_activations

    model = demo_model
    specs = input_specs_from_onnx(model)
    pre = preprocess_options(demo.DEMO_PREPROCESS)

    calib = open_data(str(demo_calib_dir), specs, preprocess=pre, batch_size=2)
    names = quantizable_activations(model)
    collector = OnnxRuntimeCollector(model, include=[re.escape(n) for n in names])
    batch = next(iter(calib))
    acts = collector.run(batch)
    scales = {n: np.float32(np.abs(v).max() / 127) for n, v in acts.items()}
    out = tmp_path / "demo.int8.onnx"
    summary = write_qdq_model(model, scales, out)
    assert len(summary.activations) == len(names) == 33 and summary.left_float == {}
    written = onnx.load(str(out))
    onnx.checker.check_model(written)
    produced_by = {o: n.op_type for n in written.graph.node for o in n.output}
    for node in written.graph.node:
        if node.op_type in ("Conv", "MatMul"):
            assert produced_by[node.input[0]] == "DequantizeLinear"
            assert produced_by[node.input[1]] == "DequantizeLinear"
    held = next(iter(open_data(str(demo_eval_dir), specs, preprocess=pre, batch_size=2)))
    x = held.inputs["x"]
    ref = run(model, x)
    got = run(out, x)
    ref64 = ref.astype(np.float64)
    sqnr = 10 * np.log10((ref64 ** 2).sum() / ((ref64 - got) ** 2).sum())
    assert sqnr > 5.0          # measured ~9-13 dB on this quantization-hostile model
    assert not np.array_equal(ref, got)
