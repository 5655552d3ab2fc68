"""Sensitive layers: per-tensor output damage, cumulative keep-float steps, and the
calibrate --keep-float / qdq / eval --sensitivity wiring, on the real demo PP-LCNet."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import onnx
import pytest

from trtkld import demo
from trtkld.cli.main import main
from trtkld.collect import OnnxRuntimeCollector
from trtkld.data import input_specs_from_onnx, open_data
from trtkld.fidelity import (
    GatedQdqSession,
    OutputAccumulator,
    materialize,
    ort_session,
    sensitivity_analysis,
)
from trtkld.fidelity.sensitivity import resolve_metric
from trtkld.qdq import quantizable_activations, write_qdq_model

MODEL = str(demo.demo_model_path())
PRE = demo.preprocess_options(demo.DEMO_PREPROCESS)
SPECS = input_specs_from_onnx(MODEL)


@pytest.fixture(scope="module")
def setup():
    """Max scales from two calibration photos; three held-out photos to measure on."""
    names = quantizable_activations(MODEL)
    collector = OnnxRuntimeCollector(MODEL, include=[re.escape(n) for n in names])
    calib = next(iter(open_data(str(demo.DEMO_CALIB_DIR), SPECS, batch_size=2, preprocess=PRE)))
    scales = {n: np.float32(np.abs(v).max() / 127) for n, v in collector.run(calib).items()}
    samples = materialize(open_data(str(demo.DEMO_EVAL_DIR), SPECS, batch_size=1,
                                    preprocess=PRE))[:3]
    return names, scales, samples


def written_sqnr(tmp_path, scales, samples, keep=()):
    """Worst-output SQNR (dB) of the Q/DQ model written with ``keep_float=keep``, computed
    here with plain numpy against the FP32 model, as trtkld eval runs both."""
    path = tmp_path / f"k{len(keep)}.onnx"
    write_qdq_model(MODEL, scales, path, keep_float=list(keep), warn_left_float=False)
    qdq, fp32 = ort_session(path, quantized=True), ort_session(MODEL, quantized=False)
    signal = noise = 0.0
    for feeds in samples:
        ref = fp32.run(None, feeds)[0].astype(np.float64)
        got = qdq.run(None, feeds)[0].astype(np.float64)
        signal += float(np.sum(ref ** 2))
        noise += float(np.sum((ref - got) ** 2))
    return 10 * np.log10(signal / noise)


def test_gated_session_is_the_written_qdq_model(setup, tmp_path):
    """Bit for bit with everything quantized; with some tensors float, up to the float rounding
    of the unquantized Convs (ONNX Runtime fuses Convs with constant weights differently)."""
    names, scales, samples = setup
    gated = GatedQdqSession(MODEL, scales)
    assert gated.tensors == names and gated.consumers[names[1]] == ["Conv.1"]
    for keep in ([], names[2:9], names[:-1]):
        path = tmp_path / f"keep{len(keep)}.onnx"
        write_qdq_model(MODEL, scales, path, keep_float=keep, warn_left_float=False)
        session = ort_session(path, quantized=True)
        on = [t for t in names if t not in keep]
        for feeds in samples:
            got, want = gated.run(feeds, on)[0], session.run(None, feeds)[0]
            if not keep:
                np.testing.assert_array_equal(got, want)
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    fp32 = ort_session(MODEL, quantized=False)
    for feeds in samples:
        np.testing.assert_allclose(gated.run(feeds, [])[0], fp32.run(None, feeds)[0],
                                   rtol=1e-5, atol=1e-6)


def test_sensitivity_ranking_and_keep_float_steps_match_written_models(setup, tmp_path):
    names, scales, samples = setup
    report = sensitivity_analysis(MODEL, scales, samples, keep_float=2)
    assert report.metric == "sqnr" and report.unit == "dB" and report.samples == 3
    assert sorted(s.tensor for s in report.per_tensor) == sorted(names)
    fidelities = [s.fidelity for s in report.per_tensor]
    assert fidelities == sorted(fidelities)
    # Each figure is the fidelity of a real Q/DQ model written with keep_float.
    assert report.all_quantized == pytest.approx(written_sqnr(tmp_path, scales, samples),
                                                 abs=1e-9)
    worst = report.per_tensor[0].tensor
    only_worst = written_sqnr(tmp_path, scales, samples, keep=[t for t in names if t != worst])
    assert report.per_tensor[0].fidelity == pytest.approx(only_worst, abs=0.01)
    assert [st.kept for st in report.steps] == [report.top(1), report.top(2)]
    for step in report.steps:
        assert step.fidelity == pytest.approx(
            written_sqnr(tmp_path, scales, samples, keep=step.kept), abs=0.01)
    assert report.steps[0].gain == pytest.approx(report.steps[0].fidelity - report.all_quantized)
    assert report.steps[1].gain == pytest.approx(report.steps[1].fidelity
                                                 - report.steps[0].fidelity)
    # Quantizing one tensor damages the output less than quantizing all of them.
    assert report.per_tensor[-1].fidelity > report.all_quantized
    text = report.format(top=3)
    assert worst in text and "keep in float, cumulatively" in text
    doc = report.to_json()
    assert doc["per_tensor"][0]["tensor"] == worst and len(doc["keep_float_steps"]) == 2


def test_metrics_resolve_and_reject_unknown_names():
    acc = OutputAccumulator("y")
    ref = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], np.float32)
    acc.update(ref, ref[:, [1, 0, 2]])
    accs = {"y": acc}
    assert resolve_metric("top1")[1](accs) == 0.0
    assert resolve_metric("cosine")[1](accs) < 0.5
    assert resolve_metric("sqnr")[2] == "dB"
    with pytest.raises(ValueError, match="unknown metric 'psnr'"):
        resolve_metric("psnr")


def _small_folders(tmp_path):
    calib, held = tmp_path / "calib", tmp_path / "held"
    calib.mkdir()
    held.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "astronaut.jpg"):
        shutil.copy(demo.DEMO_CALIB_DIR / name, calib / name)
    for name in ("flower_00_crop.jpg", "clock_02_rotate.jpg"):
        shutil.copy(demo.DEMO_EVAL_DIR / name, held / name)
    return calib, held


def test_calibrate_keep_float_leaves_the_worst_tensor_out_of_cache_and_qdq(tmp_path, capsys):
    calib, _ = _small_folders(tmp_path)
    cache = tmp_path / "k.cache"
    code = main(["calibrate", "--demo", "--data", str(calib), "--method", "max", "-q",
                 "--table", "none", "--keep-float", "1", "--sensitivity-samples", "2",
                 "-o", str(cache)])
    out = capsys.readouterr().out
    assert code == 0
    kept = json.loads((tmp_path / "k.cache.trtkld.json").read_text())["keep_float"]
    assert len(kept) == 1 and f"1. {kept[0]}" in out
    lines = cache.read_text().splitlines()[1:]
    assert not any(line.startswith(kept[0] + ":") for line in lines)
    # Without --keep-float the same tensor is in the cache.
    plain = tmp_path / "plain.cache"
    assert main(["calibrate", "--demo", "--data", str(calib), "--method", "max", "-q",
                 "--table", "none", "-o", str(plain)]) == 0
    assert any(line.startswith(kept[0] + ":") for line in plain.read_text().splitlines())
    # qdq --cache reads the sidecar: the tensor stays float on request, the rest quantized.
    qdq = tmp_path / "k.int8.onnx"
    assert main(["qdq", MODEL, "--cache", str(cache), "-o", str(qdq)]) == 0
    assert "32 of 33 weighted ops" in capsys.readouterr().out
    quantized = {n.input[0] for n in onnx.load(str(qdq)).graph.node
                 if n.op_type == "QuantizeLinear"}
    assert kept[0] not in quantized and len(quantized) == 32


def test_keep_float_names_errors_are_clear(tmp_path, capsys):
    calib, _ = _small_folders(tmp_path)
    code = main(["calibrate", "--demo", "--data", str(calib), "--method", "max", "-q",
                 "--table", "none", "--keep-float-names", "no_such_tensor",
                 "-o", str(tmp_path / "x.cache")])
    err = capsys.readouterr().err
    assert code != 0 and not (tmp_path / "x.cache").exists()
    assert "--keep-float-names: 'no_such_tensor' is not an activation input" in err
    assert "Traceback" not in err


def test_eval_sensitivity_reports_and_writes_json(tmp_path, capsys):
    calib, held = _small_folders(tmp_path)
    out_json = tmp_path / "e.json"
    code = main(["eval", "--demo", "--data", str(calib), "--eval-data", str(held),
                 "--method", "max", "--peers", "none", "-q", "--sensitivity",
                 "--sensitivity-top", "1", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0
    assert "sensitivity of max's scales" in out and "most sensitive tensors" in out
    doc = json.loads(out_json.read_text())
    sens = doc["sensitivity"]
    assert sens["samples"] == 2 and len(sens["per_tensor"]) == 33
    assert len(sens["keep_float_steps"]) == 1
    # The all-quantized figure is eval's own output SQNR for max (same models, same data).
    max_row = doc["methods"]["max"]
    assert sens["all_quantized"] == pytest.approx(max_row["output_sqnr_db"], abs=1e-4)


def test_tensors_excluded_from_calibration_are_float_on_request_for_qdq(tmp_path, capsys):
    """calibrate --exclude leaves most inputs out of the cache: the sidecar says so, and qdq
    keeps them float instead of refusing a mostly-float model."""
    calib, _ = _small_folders(tmp_path)
    cache = tmp_path / "ex.cache"
    pattern = r"p2o\.pd_op\.hardswish\.[0-9]+\.0"
    assert main(["calibrate", "--demo", "--data", str(calib), "--method", "max", "-q",
                 "--table", "none", "--exclude", pattern, "-o", str(cache)]) == 0
    kept = json.loads((tmp_path / "ex.cache.trtkld.json").read_text())["keep_float"]
    names = quantizable_activations(MODEL)
    assert kept == [n for n in names if re.fullmatch(pattern, n)] and len(kept) > len(names) / 2
    capsys.readouterr()
    qdq = tmp_path / "ex.int8.onnx"
    assert main(["qdq", MODEL, "--cache", str(cache), "-o", str(qdq)]) == 0
    done = len(names) - len(kept)
    assert f"{done} of {len(names)} weighted ops" in capsys.readouterr().out
    # The same cache without its sidecar is refused: under half quantized, nothing requested.
    (tmp_path / "ex.cache.trtkld.json").unlink()
    assert main(["qdq", MODEL, "--cache", str(cache), "-o", str(tmp_path / "no.onnx")]) != 0
    assert f"only {done} of {len(names)} weighted ops" in capsys.readouterr().err
