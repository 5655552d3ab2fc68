"""trtkld.fidelity: a Q/DQ model whose scales are fed per run equals the model written with
them (bit for bit), scale-input lifting, held-out folds and in-memory samples."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.small_model import X, maxabs_scales, small_model
from trtkld import demo
from trtkld.calibration.refine import RefineOptions
from trtkld.data import Batch, input_specs_from_onnx, open_data
from trtkld.errors import DataError, ModelError
from trtkld.fidelity import (
    ScaleFeedSession,
    fold_indices,
    lift_scale_inputs,
    materialize,
    ort_session,
)
from trtkld.qdq import quantizable_activations, write_qdq_model

RNG = np.random.default_rng(99)


def transpose_pool_model() -> onnx.ModelProto:
    """NHWC X[2,8,8,3] -Transpose-> t -Conv-> c -Relu-> r -MaxPool 2x2-> p -Conv-> c2
    -AveragePool-> a -Reshape-> f -MatMul-> mm -Add-> Y[2,3] (open-nsfw's shape of graph).

    Q/DQ on t, p and f sit right after a Transpose, a MaxPool and a Reshape, where ONNX
    Runtime's QDQPropagationTransformer copies them when the scales are constants."""
    w1 = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = RNG.standard_normal((2, 4, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["X"], ["t"], name="tr", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "W1"], ["c"], name="conv1"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["p", "W2"], ["c2"], name="conv2"),
        helper.make_node("AveragePool", ["c2"], ["a"], name="avg", kernel_shape=[3, 3]),
        helper.make_node("Reshape", ["a", "shape"], ["f"], name="reshape"),
        helper.make_node("MatMul", ["f", "Wm"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "Bm"], ["Y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "tp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 8, 8, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2"),
         numpy_helper.from_array(np.array([-1, 2], np.int64), "shape"),
         numpy_helper.from_array(RNG.standard_normal((2, 3)).astype(np.float32), "Wm"),
         numpy_helper.from_array(RNG.standard_normal(3).astype(np.float32), "Bm")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


# --------------------------------------------------------------------------- scale feeding


@pytest.mark.parametrize("which", ["small", "transpose_pool", "nsfw"])
def test_fed_scales_are_bit_identical_to_a_model_written_with_them(which, tmp_path):
    if which == "small":
        model, x = small_model(), X
        base = maxabs_scales(X)
    elif which == "nsfw":
        # The real case where ORT's QDQ propagation (constant scales only) changed the output
        # bits: Q/DQ after the input Transpose and around the final Reshapes.
        model = str(demo.nsfw_model_path())
        from trtkld.demo import preprocess_options

        data = open_data(str(demo.DEMO_CALIB_DIR), input_specs_from_onnx(model),
                         preprocess=preprocess_options(demo.NSFW_PREPROCESS), batch_size=12)
        x = next(iter(data)).inputs["input:0"]
        base = {t: np.float32(RNG.uniform(0.01, 0.1)) for t in quantizable_activations(model)}
    else:
        model = transpose_pool_model()
        x = RNG.standard_normal((2, 8, 8, 3)).astype(np.float32) * 3
        base = {"t": np.float32(np.abs(x).max() / 127), "p": np.float32(0.05),
                "f": np.float32(0.03)}
    name = input_specs_from_onnx(model)[0].name
    # Template scales deliberately equal for every tensor: no sharing may merge them.
    feed = ScaleFeedSession(model, {t: np.float32(0.02) for t in base})
    assert sorted(feed.tensors) == sorted(t for t in base if t in feed.tensors)
    assert len(feed.tensors) >= 2
    for k, factor in enumerate([1.0, 0.3, 0.55, 2.0][:2 if which == "nsfw" else 4]):
        scales = {t: np.float32(s * factor * (1 + 0.1 * i)) for i, (t, s) in
                  enumerate(sorted(base.items()))}
        path = tmp_path / f"q{k}.onnx"
        write_qdq_model(model, scales, path, warn_left_float=False)
        want = ort_session(path, quantized=True).run(None, {name: x})
        got = feed.run({name: x}, scales)
        for a, b in zip(want, got):
            assert a.tobytes() == b.tobytes(), (which, factor)
        # Scales really act: a different scale set gives a different output.
        if k:
            assert got[0].tobytes() != feed.run({name: x}, base)[0].tobytes()


def test_scale_feeding_rejects_missing_or_unusable_scales():
    feed = ScaleFeedSession(small_model(), maxabs_scales(X))
    scales = {t: np.float32(0.01) for t in feed.tensors}
    with pytest.raises(ModelError, match="no scale given"):
        feed.run({"X": X}, {t: s for t, s in scales.items() if t != "f"})
    with pytest.raises(ModelError, match="not a finite positive"):
        feed.run({"X": X}, {**scales, "f": np.float32(0.0)})


def test_lift_scale_inputs_names_each_tensor_and_rejects_unquantized(tmp_path):
    path = tmp_path / "q.onnx"
    write_qdq_model(small_model(), maxabs_scales(X), path)
    proto = onnx.load(str(path))
    mapping = lift_scale_inputs(proto, ["X", "f", "m"])
    assert len(set(mapping.values())) == 3
    inputs = {i.name for i in proto.graph.input}
    assert set(mapping.values()) <= inputs
    with pytest.raises(ModelError, match="no QuantizeLinear"):
        lift_scale_inputs(onnx.load(str(path)), ["c"])


# --------------------------------------------------------------------------- pure parts


def test_folds_are_disjoint_cover_every_sample_and_need_enough_samples():
    folds = fold_indices(12, 2)
    assert folds == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]
    folds = fold_indices(7, 3)
    assert sorted(i for f in folds for i in f) == list(range(7))
    assert not set(folds[0]) & set(folds[1])
    with pytest.raises(DataError, match="at least 2 calibration samples"):
        fold_indices(1, 2)
    with pytest.raises(ValueError):
        RefineOptions(folds=1)


def test_materialize_keeps_real_rows_in_order():
    a = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    batches = [Batch({"x": a}, ("s0", "s1", "s1 (padding)")), Batch({"x": a[:1] + 10}, ("s2",))]
    samples = materialize(batches)
    assert [s["x"].tolist() for s in samples] == [[[0, 1]], [[2, 3]], [[10, 11]]]
