"""End-to-end calibration on CPU: ORT collector, two-pass histograms, CLI, caches."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtkld.cache import parse_cache
from trtkld.cli.main import main
from trtkld.collect import OnnxRuntimeCollector
from trtkld.data import input_specs_from_onnx, open_data
from trtkld.histogram import HistogramSet
from trtkld.pipeline import calibrate, collect_histograms, search_histograms


def _tiny_model(path, *, with_nan: bool = False) -> str:
    """x[N,4,8] -> MatMul -> Relu -> Mul(0.5) -> y, plus a Shape subgraph and an int tensor.

    With ``with_nan``: also Log(x) (NaN for negative x, -inf at 0) and x*0 (all zeros).
    """
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 6)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
        helper.make_node("Relu", ["mm"], ["relu"], name="relu"),
        helper.make_node("Mul", ["relu", "half"], ["y"], name="mul"),
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Cast", ["shape"], ["shape_f"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Cast", ["x"], ["x_int"], to=TensorProto.INT32, name="toint"),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6]),
        helper.make_tensor_value_info("shape_f", TensorProto.FLOAT, [3]),
        helper.make_tensor_value_info("x_int", TensorProto.INT32, ["N", 4, 8]),
    ]
    if with_nan:
        nodes += [
            helper.make_node("Log", ["x"], ["logx"], name="log"),
            helper.make_node("Mul", ["x", "zero"], ["zeros"], name="zero_mul"),
        ]
        outputs += [
            helper.make_tensor_value_info("logx", TensorProto.FLOAT, ["N", 4, 8]),
            helper.make_tensor_value_info("zeros", TensorProto.FLOAT, ["N", 4, 8]),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
        outputs,
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _npy_data(tmp_path, n: int = 10, seed: int = 1):
    folder = tmp_path / f"npy{seed}"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        x = rng.laplace(size=(4, 8)).astype(np.float32) * (1 + i)
        np.save(folder / f"s{i:02d}.npy", x)
        samples.append(x)
    return folder, np.stack(samples)


def _reference_histograms(model_path, batch: np.ndarray, num_bins: int):
    """Direct histograms of the concatenated activations, computed with plain numpy."""
    import onnxruntime as ort

    proto = onnx.load(model_path)
    names = ["x", "mm", "relu", "y"]
    for n in names[1:]:
        if n not in [o.name for o in proto.graph.output]:
            proto.graph.output.append(onnx.ValueInfoProto(name=n))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": batch})))
    values["x"] = batch
    expected = {}
    for n in names:
        a = np.abs(values[n].astype(np.float64)).ravel()
        r = a.max()
        idx = np.minimum(np.floor(a * (np.float64(num_bins) / r)), num_bins - 1).astype(np.int64)
        expected[n] = (float(np.abs(values[n]).max()), np.bincount(idx, minlength=num_bins))
    return expected


def test_collector_selects_float_activations_only(tmp_path):
    model = _tiny_model(tmp_path / "tiny.onnx")
    names = OnnxRuntimeCollector(model).tensor_names
    # graph input first, then float node outputs; Shape subgraph and int tensors skipped
    assert names == ["x", "mm", "relu", "y"]
    assert OnnxRuntimeCollector(model, exclude=["r.*"]).tensor_names == ["x", "mm", "y"]
    assert OnnxRuntimeCollector(model, include=["mm", "y"]).tensor_names == ["mm", "y"]


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_two_pass_histograms_equal_direct_numpy_histogram(tmp_path, budget):
    model = _tiny_model(tmp_path / "tiny.onnx")
    folder, samples = _npy_data(tmp_path)
    data = open_data(str(folder), input_specs_from_onnx(model), batch_size=3)
    hists = collect_histograms(model, data, num_bins=2048, quiet=True, memory_budget_bytes=budget)
    # batch_size=3 over 10 samples on a dynamic batch dim: the last batch holds 1 sample
    expected = _reference_histograms(model, samples, 2048)
    assert list(hists) == list(expected)
    for name, (absmax, counts) in expected.items():
        assert hists[name].hist_max == absmax
        np.testing.assert_array_equal(hists[name].counts, counts, err_msg=name)
        assert hists[name].counts.sum() == samples.size * (6 / 8 if name != "x" else 1)


def test_merged_shards_give_the_full_set_cache(tmp_path):
    model = _tiny_model(tmp_path / "tiny.onnx")
    folder, _ = _npy_data(tmp_path, n=8)
    files = sorted(folder.glob("*.npy"))
    halves = []
    for k, part in enumerate((files[:4], files[4:])):
        sub = tmp_path / f"half{k}"
        sub.mkdir()
        for f in part:
            (sub / f.name).write_bytes(f.read_bytes())
        halves.append(sub)
    specs = input_specs_from_onnx(model)
    full = collect_histograms(model, open_data(str(folder), specs), num_bins=4096, quiet=True)
    # pass 1 on each shard, ranges merged, then pass 2 on each shard with the common ranges
    ranges = {}
    for sub in halves:
        part = collect_histograms(model, open_data(str(sub), specs), num_bins=4096, quiet=True)
        for name, h in part.items():
            ranges[name] = max(ranges.get(name, 0.0), h.hist_max)
    parts = []
    for k, sub in enumerate(halves):
        h = collect_histograms(
            model, open_data(str(sub), specs), num_bins=4096, quiet=True, hist_max=ranges
        )
        h.save(tmp_path / f"h{k}.npz")
        parts.append(tmp_path / f"h{k}.npz")
    merged = HistogramSet.load(parts[0]).merge(HistogramSet.load(parts[1]))
    for method in ("ppq", "nvidia", "modelopt"):
        a = search_histograms(full, method)
        b = search_histograms(merged, method)
        assert [np.float32(r.scale).tobytes() for r in a.values()] == [
            np.float32(r.scale).tobytes() for r in b.values()
        ], method
    # and through the CLI: --from-histograms merges the shard files
    out = tmp_path / "merged.cache"
    assert main(["calibrate", "--from-histograms", *map(str, parts), "--method", "ppq",
                 "--out", str(out), "--trt-version", "10.9.0", "--quiet", "--table", "none"]) == 0
    full_out = tmp_path / "full.cache"
    assert main(["calibrate", model, "--data", str(folder), "--method", "ppq", "--out",
                 str(full_out), "--trt-version", "10.9.0", "--quiet", "--table", "none"]) == 0
    assert out.read_bytes() == full_out.read_bytes()


def test_nan_and_all_zero_tensors_get_finite_scales(tmp_path, caplog):
    model = _tiny_model(tmp_path / "nan.onnx", with_nan=True)
    folder, samples = _npy_data(tmp_path, n=4)
    data = open_data(str(folder), input_specs_from_onnx(model))
    hists, outcomes = calibrate(
        model, data, ["ppq", "nvidia", "modelopt", "max", "percentile"],
        trt_version="10.9.0", quiet=True,
    )
    assert hists["logx"].num_nan == int((samples < 0).sum())
    assert hists["zeros"].hist_max == 0 and hists["zeros"].counts.sum() == 0
    for outcome in outcomes.values():
        for name, scale in outcome.cache.scales.items():
            assert math.isfinite(float(scale)) and float(scale) > 0, (outcome.method, name)
        assert outcome.results["zeros"].fallback
    assert any("NaN" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    outs = []
    for k in range(2):
        out = tmp / f"demo{k}.cache"
        rc = main(["calibrate", "--demo", "--method", "ppq", "--out", str(out), "--quiet",
                   "--trt-version", "8.6.1"])
        assert rc == 0
        outs.append(out)
    return outs


def test_demo_cache_covers_every_float_activation(demo_runs, demo_model):
    cache = parse_cache(demo_runs[0])
    assert cache.version_number == 8601 and cache.algorithm == "EntropyCalibration2"
    proto = onnx.load(demo_model)
    inferred = onnx.shape_inference.infer_shapes(proto)
    float_outputs = {
        v.name for v in list(inferred.graph.value_info) + list(inferred.graph.output)
        if v.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    node_outputs = {o for n in proto.graph.node for o in n.output}
    expected = (float_outputs & node_outputs) | {"x"}
    assert expected <= set(cache.scales)
    assert len(cache.scales) >= 100
    for name, scale in cache.scales.items():
        assert math.isfinite(float(scale)) and float(scale) > 0, name


def test_demo_cache_is_byte_identical_across_runs(demo_runs, demo_calib_dir):
    assert demo_runs[0].read_bytes() == demo_runs[1].read_bytes()
    assert len(sorted(demo_calib_dir.glob("*.jpg"))) >= 10


def test_cli_errors_are_one_line(tmp_path, capsys):
    model = _tiny_model(tmp_path / "tiny.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["calibrate", model, "--data", str(empty), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and str(empty) in err and "Traceback" not in err
    assert main(["calibrate", model, "--data", str(empty), "--method", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
    rc = main(["calibrate", model, "--data", str(empty), "-m", "ppq,nvidia", "-o", "a.cache"])
    assert rc == 2
    assert "{method}" in capsys.readouterr().err


def test_wrong_image_size_for_fixed_shape_model_names_input_and_file(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "one.npy", np.zeros((1, 3, 200, 200), np.float32))
    assert main(["calibrate", "--demo", "--data", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'x'" in err and "one.npy" in err and "224" in err and "200" in err


def test_guard_warns_and_strict_refuses_to_write(tmp_path, caplog, capsys):
    out = tmp_path / "g.cache"
    base = ["calibrate", "--demo", "--method", "nvidia", "--out", str(out), "-q",
            "--table", "none", "--trt-version", "10.9.0"]
    assert main(base) == 0
    assert "guard: nvidia:" in caplog.text and "clips" in caplog.text
    # the same thresholds are accepted when the limits are loose enough
    caplog.clear()
    assert main(base + ["--guard-clipped", "1", "--guard-sqnr-drop", "1000"]) == 0
    assert "guard:" not in caplog.text
    out.unlink()
    assert main(base + ["--strict"]) == 1   # EXIT_QUALITY, as eval --strict
    err = capsys.readouterr().err
    assert "guard: nvidia:" in err and "--strict: no cache written" in err
    assert not out.exists()


def test_guard_results_match_the_search_guard(tmp_path):
    from trtkld.pipeline import guard_results
    from trtkld.search import guard_findings

    model = _tiny_model(tmp_path / "tiny.onnx", with_nan=True)
    folder, _ = _npy_data(tmp_path, n=4)
    data = open_data(str(folder), input_specs_from_onnx(model))
    hists, outcomes = calibrate(model, data, ["percentile"], trt_version="10.9.0", quiet=True,
                                method_options={"percentile": {"percentile": 90.0}},
                                guard_limits={"max_clipped_fraction": 0.05})
    outcome = outcomes["percentile"]
    flagged = outcome.findings
    assert flagged == guard_results(hists, outcome.results, max_clipped_fraction=0.05)
    assert "zeros" not in flagged  # the all-zero fallback is deliberate, not a finding
    for name, found in flagged.items():
        direct = guard_findings(hists[name].counts, hists[name].bin_width,
                                outcome.results[name], max_clipped_fraction=0.05, name=name)
        assert [f.message for f in found] == [f.message for f in direct if f.kind != "fallback"]
    # keeping 90% of |x| clips about 10% of every tensor with a spread of values
    assert {"x", "mm", "relu", "y"} <= set(flagged)
    assert all(any(f.kind == "clipped" for f in flagged[n]) for n in ("x", "mm", "y"))


def test_api_takes_every_data_form_and_gives_the_same_thresholds(tmp_path):
    """trtkld.calibrate(data=...): a .npy folder, a list of dicts, a callable returning dicts
    and an opened CalibrationData all give the same histograms, thresholds and cache bytes."""
    import trtkld
    from trtkld.errors import DataError

    model = _tiny_model(tmp_path / "tiny.onnx")
    folder, batch = _npy_data(tmp_path)
    as_dicts = [{"x": row} for row in batch]
    opened = open_data(str(folder), input_specs_from_onnx(model), batch_size=4)
    forms = {"folder": str(folder), "dicts": as_dicts, "callable": lambda: iter(as_dicts),
             "opened": opened}
    reference = _reference_histograms(model, batch, 4096)
    caches = {}
    for label, data in forms.items():
        cal = trtkld.calibrate(model, data, ["ppq", "max"], batch_size=4, quiet=True)
        assert list(cal.results) == ["ppq", "max"], label
        caches[label] = cal.write_cache(tmp_path / f"{label}.cache", "ppq", trt_version="10.9.0")
        for name in ("x", "relu"):
            absmax, counts = reference[name]
            assert cal.histograms[name].absmax == np.float32(absmax), (label, name)
            np.testing.assert_array_equal(cal.histograms[name].counts, counts)
    assert len(set(caches.values())) == 1
    with pytest.raises(DataError, match="one-shot generator"):
        trtkld.calibrate(model, ({"x": row} for row in batch), ["ppq"], quiet=True)
