"""trtkld.evaluate and `trtkld eval`: metrics, DESTRUCTIVE rules, ORT peers, the real demo model."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx
import pytest

from tests.helpers.small_model import X, float_forward, small_model
from trtkld import demo
from trtkld.cli.main import main
from trtkld.data import input_specs_from_onnx, open_data
from trtkld.evaluate import (
    evaluate,
    explain,
    find_destructive,
    format_table,
    report_to_json,
    symmetric_scale,
    worst_tensors,
)
from trtkld.evaluate.peers import PEERS, peer_scales
from trtkld.qdq import prepare_model
from trtkld.report.evaljson import parse_eval

# --------------------------------------------------------------------------- pure functions


def test_destructive_floor_and_margin_rules():
    verdict = find_destructive({"ppq": 30.0, "mse": 25.0, "nvidia": 9.9})
    assert list(verdict) == ["nvidia"] and "floor" in verdict["nvidia"]
    verdict = find_destructive({"a": 40.0, "b": 29.9, "c": 30.0})
    assert list(verdict) == ["b"] and "under the best" in verdict["b"]
    verdict = find_destructive({"a": 40.0, "b": 35.0}, floor_db=36.0)
    assert list(verdict) == ["b"]
    verdict = find_destructive({"a": 40.0, "b": 37.0}, margin_db=2.0)
    assert list(verdict) == ["b"]
    # NaN (nothing comparable) and -inf (NaN/Inf in the INT8 output) are destructive.
    verdict = find_destructive({"a": 20.0, "b": math.nan, "c": -math.inf})
    assert set(verdict) == {"b", "c"}
    # An output identical to FP32 does not make a 50 dB method "infinitely" worse.
    assert find_destructive({"a": math.inf, "b": 50.0}) == {}
    assert find_destructive({}) == {}


def test_worst_tensors_ranks_by_loss_against_the_best():
    own = {"t1": 30.0, "t2": 5.0, "t3": 20.0}
    best = {"t1": 40.0, "t2": 6.0, "t3": 35.0}
    rows = worst_tensors(own, {"t1": 0.1, "t2": 0.0, "t3": 0.2}, reference_sqnr_db=best, count=2)
    assert [r[0] for r in rows] == ["t3", "t1"]   # losses 15 and 10 dB; t2 only loses 1 dB
    rows = worst_tensors(own, {}, count=1)
    assert rows[0][0] == "t2"                     # no reference: lowest SQNR
    text = explain("ppq", "output SQNR 3.0 dB < 10 dB floor", rows, ["t2 clips 5%"])
    assert text.startswith("ppq is DESTRUCTIVE") and "t2" in text and "Guard: t2 clips 5%" in text


def test_symmetric_scale_and_its_fallback():
    assert symmetric_scale(-3.0, 1.0) == np.float32(3.0 / 127)
    assert symmetric_scale(0.5, 2.0) == np.float32(2.0 / 127)
    for lo, hi in ((0.0, 0.0), (math.nan, 1.0), (-math.inf, 1.0)):
        assert symmetric_scale(lo, hi) == np.float32(1.0 / 127)


# --------------------------------------------------------------------------- ORT peers


def test_ort_minmax_peer_gives_max_abs_of_every_conv_matmul_gemm_input():
    """Oracle: the numpy forward pass of the small model over the same samples."""
    rng = np.random.default_rng(7)
    samples = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(5)]
    prepared, _ = prepare_model(small_model())
    feeds = [{"X": np.concatenate(samples[:3])}, {"X": np.concatenate(samples[3:])}]
    got = peer_scales(prepared, feeds, PEERS["ort-minmax"], op_types=["Conv", "MatMul", "Gemm"])
    acts = [float_forward(x) for x in samples]
    # The graph input is seen exactly; f and m differ from numpy by float32 conv rounding only.
    assert got["X"] == np.float32(max(float(np.abs(a["X"]).max()) for a in acts) / 127)
    for name in ("f", "m"):
        amax = max(float(np.abs(a[name]).max()) for a in acts)
        assert got[name] == pytest.approx(amax / 127, rel=1e-5), name
    # ORT also calibrates the ops' outputs; write_qdq_model just does not use them.
    assert {"X", "f", "m"} <= set(got)


def test_ort_entropy_2048_peer_runs_with_uneven_batches():
    rng = np.random.default_rng(8)
    prepared, _ = prepare_model(small_model())
    feeds = [{"X": rng.standard_normal((n, 3, 8, 8)).astype(np.float32)} for n in (3, 2)]
    got = peer_scales(prepared, feeds, PEERS["ort-entropy-2048"], op_types=["Conv"])
    assert got["X"] > 0 and np.isfinite(got["X"])
    assert got["X"] <= np.float32(np.abs(np.concatenate([f["X"] for f in feeds])).max() / 127)


def test_ort_entropy_peer_takes_inputs_of_several_widths():
    """A recognizer's text lines differ in width; ORT's histogram calibrator cannot stack them
    in one call, so the peer feeds each shape in its own calls (ORT merges the histograms)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(9)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["X", "W"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Conv", ["r", "W2"], ["Y"])],
        "lines", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 8, "w"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2, 8, "w"])],
        [numpy_helper.from_array(w, "W"),
         numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    prepared, _ = prepare_model(model)
    feeds = [{"X": rng.standard_normal((1, 1, 8, width)).astype(np.float32)}
             for width in (16, 24, 16, 32)]
    for peer in ("ort-entropy-2048", "ort-minmax"):
        got = peer_scales(prepared, feeds, PEERS[peer], op_types=["Conv"])
        biggest = max(float(np.abs(f["X"]).max()) for f in feeds)
        assert 0 < got["X"] <= np.float32(biggest / 127) and np.isfinite(got["r"])
    assert got["X"] == np.float32(biggest / 127)     # MinMax: the largest |x| of every width


# --------------------------------------------------------------------------- real demo model


@pytest.fixture(scope="module")
def small_folders(tmp_path_factory):
    """3 calibration and 3 evaluation images (the repo's disjoint folders)."""
    root = tmp_path_factory.mktemp("eval_data")
    calib, held = root / "calib", root / "eval"
    calib.mkdir()
    held.mkdir()
    for src, dst in ((demo.DEMO_CALIB_DIR, calib), (demo.DEMO_EVAL_DIR, held)):
        images = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".png"))
        for p in images[:: max(1, len(images) // 3)][:3]:
            shutil.copy(p, dst / p.name)
    return calib, held


@pytest.fixture(scope="module")
def demo_report(small_folders):
    from trtkld.demo import preprocess_options

    calib_dir, eval_dir = small_folders
    model = str(demo.demo_model_path())
    specs = input_specs_from_onnx(model)
    pre = preprocess_options(demo.DEMO_PREPROCESS)
    calib = open_data(str(calib_dir), specs, preprocess=pre, batch_size=2)
    held = open_data(str(eval_dir), specs, preprocess=pre, batch_size=2)
    return evaluate(model, calib, held, ["max", "ppq"], ["ort-minmax"], trt_version="10.13.3",
                    quiet=True, calib_description="calib", eval_description="eval")


def test_demo_eval_table_is_finite_and_max_equals_ort_minmax(demo_report):
    rows = {m.name: m for m in demo_report.methods}
    assert list(rows) == ["max", "ppq", "ort-minmax"]
    assert demo_report.num_eval_samples == 3 and demo_report.num_calib_samples == 3
    for m in rows.values():
        assert math.isfinite(m.output_sqnr_db) and m.output_sqnr_db > 0
        assert 0.0 < m.cosine <= 1.0
        assert m.top1_agreement is not None and 0.0 <= m.top1_agreement <= 1.0
        assert m.quantized_tensors == 33 and len(m.tensor_sqnr_db) == 33
        assert all(math.isfinite(v) for v in m.tensor_sqnr_db.values())
    # trtkld's `max` and ORT's MinMax see the same values: same thresholds (to float32
    # rounding of amax / 127), so the same INT8 model and the same fidelity.
    mx, ort_mm = rows["max"], rows["ort-minmax"]
    assert set(mx.scales) == set(ort_mm.scales)
    for t in mx.scales:
        assert mx.scales[t] == pytest.approx(ort_mm.scales[t], rel=2e-7), t
    assert mx.output_sqnr_db == pytest.approx(ort_mm.output_sqnr_db, abs=0.05)
    table = format_table(demo_report)
    assert all(name in table for name in rows) and "out SQNR dB" in table


def test_demo_eval_json_is_strict_json_the_report_reads(demo_report):
    doc = report_to_json(demo_report)
    text = json.dumps(doc, allow_nan=False)
    table = parse_eval(json.loads(text))
    assert [name for name, _ in table.rows] == ["max", "ppq", "ort-minmax"]
    assert "output_sqnr_db" in table.columns and "destructive" in table.columns
    assert set(table.per_tensor_sqnr["ppq"]) == set(demo_report.methods[1].tensor_sqnr_db)


def test_cli_eval_strict_exit_status_and_json(small_folders, tmp_path, capsys):
    calib_dir, eval_dir = small_folders
    out = tmp_path / "e.json"
    base = ["eval", "--demo", "--data", str(calib_dir), "--eval-data", str(eval_dir),
            "--method", "max", "--peers", "none", "--quiet", "--batch-size", "4"]
    assert main(base + ["--json", str(out), "--strict", "--floor-db", "0"]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "trtkld-eval/1" and list(doc["methods"]) == ["max"]
    assert doc["methods"]["max"]["destructive"] is False
    # Every method under an impossible floor: DESTRUCTIVE, and --strict fails the run.
    assert main(base + ["--strict", "--floor-db", "1000"]) == 1
    captured = capsys.readouterr()
    assert "DESTRUCTIVE" in captured.out and "--strict" in captured.err
    assert "\033[" not in captured.out  # not a tty: no colour codes


def test_cli_eval_rejects_calibration_data_as_eval_data(small_folders, capsys):
    calib_dir, _ = small_folders
    code = main(["eval", "--demo", "--data", str(calib_dir), "--eval-data", str(calib_dir)])
    assert code == 2 and "held-out" in capsys.readouterr().err


def test_cli_qdq_from_cache(tmp_path, capsys):
    from trtkld.cache import CalibrationCache, write_cache

    model = tmp_path / "small.onnx"
    onnx.save(small_model(), str(model))
    scales = {k: np.float32(np.abs(v).max() / 127) for k, v in float_forward(X).items()}
    cache = tmp_path / "small.cache"
    write_cache(CalibrationCache.from_trt_version("10.13.3", "EntropyCalibration2", scales), cache)
    out = tmp_path / "small.int8.onnx"
    assert main(["qdq", str(model), "--cache", str(cache), "-o", str(out)]) == 0
    assert "3 activation tensors" in capsys.readouterr().out
    written = onnx.load(str(out))
    q = {n.input[0]: n.input[1] for n in written.graph.node if n.op_type == "QuantizeLinear"}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in written.graph.initializer}
    assert all(inits[q[t]].tobytes() == scales[t].tobytes() for t in ("X", "f", "m"))
    assert main(["qdq", str(model), "-o", str(out)]) == 2
    assert "exactly one source" in capsys.readouterr().err


def test_eval_calibrates_through_the_public_api_with_the_same_thresholds(small_folders):
    """eval's trtkld rows come from one ``trtkld.calibrate()`` call; its thresholds are those of
    the plain stage wiring (collect once at the finest bins, search each method, output-measured
    auto on the same collection) -- the wiring eval used before the API existed."""
    import re

    from trtkld.calibration.auto import AutoOptions, output_measured_auto
    from trtkld.demo import preprocess_options
    from trtkld.evaluate import trtkld_candidates
    from trtkld.pipeline import bins_for_methods, calibrate, collect_histograms
    from trtkld.qdq import DEFAULT_OP_TYPES, quantizable_activations

    calib_dir, _ = small_folders
    model = str(demo.demo_model_path())
    calib = open_data(str(calib_dir), input_specs_from_onnx(model), batch_size=2,
                      preprocess=preprocess_options(demo.DEMO_PREPROCESS))
    include = [re.escape(n) for n in quantizable_activations(model, DEFAULT_OP_TYPES)]
    methods = ["ppq", "nvidia", "percentile", "auto"]
    options = {"percentile": {"percentile": 99.9}}
    auto_options = AutoOptions(folds=2, heldout=3)

    got = {c.name: c for c in trtkld_candidates(model, calib, methods, quiet=True,
                                                method_options=options, auto=auto_options)}
    assert list(got) == methods
    measured = output_measured_auto(model, calib, options=auto_options, include=include,
                                    method_options=options, quiet=True)
    _, outcomes = calibrate(model, calib, methods[:-1], include=include, quiet=True,
                            histograms=measured.histograms, method_options=options)
    expected = {m: o.results for m, o in outcomes.items()} | {"auto": measured.results}
    for method, results in expected.items():
        assert {n: np.float32(r.scale).tobytes() for n, r in results.items()} == {
            n: s.tobytes() for n, s in got[method].scales.items()}, method
    assert got["auto"].auto.chosen == measured.chosen
    assert got["auto"].description == f"trtkld auto, output-measured: {measured.chosen}"

    # The histogram rule (auto=None): one collection at the finest bins the methods need.
    got = {c.name: c for c in trtkld_candidates(model, calib, methods, quiet=True, auto=None)}
    hists = collect_histograms(model, calib, num_bins=bins_for_methods(methods), include=include,
                               quiet=True)
    _, outcomes = calibrate(model, calib, methods, include=include, quiet=True, histograms=hists)
    for method, outcome in outcomes.items():
        assert {n: np.float32(r.scale).tobytes() for n, r in outcome.results.items()} == {
            n: s.tobytes() for n, s in got[method].scales.items()}, method
        assert got[method].auto is None and got[method].guard_notes is not None
