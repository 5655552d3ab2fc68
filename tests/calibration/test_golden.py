"""The calibration API and the CLI write the caches the pre-refactor CLI wrote, byte for byte.

Oracle: tests/fixtures/golden/ (see its README.md), written by ``trtkld calibrate`` before the
calibration package and the method registry existed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import trtkld
from trtkld import demo
from trtkld.cli.main import main
from trtkld.errors import DataError, SearchError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
METHODS = ["ppq", "nvidia", "modelopt", "max", "percentile", "mse", "auto"]
OVERRIDES = {"x": "max", ".*Conv.*": "modelopt"}


@pytest.fixture(scope="module")
def four_photos(tmp_path_factory, demo_calib_dir) -> Path:
    folder = tmp_path_factory.mktemp("four")
    for photo in sorted(demo_calib_dir.glob("*.jpg"))[:4]:
        shutil.copy(photo, folder / photo.name)
    return folder


def _sidecar(path: Path) -> dict:
    data = json.loads(Path(str(path) + ".trtkld.json").read_text())
    data.pop("trtkld_version")
    return data


# Sidecar fields added after the golden files were written (issue 11: provenance).
PROVENANCE_FIELDS = {"model_sha256", "data_sha256", "data", "trt_version", "tensorrt_installed",
                     "command_options"}


def _assert_golden(written: Path, golden_name: str) -> None:
    golden = GOLDEN / golden_name
    assert written.read_bytes() == golden.read_bytes(), golden_name
    now, then = _sidecar(written), _sidecar(golden)
    assert {k: v for k, v in now.items() if k not in PROVENANCE_FIELDS} == then, golden_name
    assert {"model_sha256", "data_sha256", "trt_version"} <= set(now), golden_name


@pytest.fixture(scope="module")
def api_calibration(demo_model, four_photos):
    # auto=None: the per-tensor histogram-SQNR rule the pre-refactor CLI called auto (the
    # output-measured auto, now the default, is tested in tests/calibration/test_auto.py).
    return trtkld.calibrate(
        demo_model, str(four_photos), METHODS, batch_size=2,
        preprocess=demo.preprocess_options(demo.DEMO_PREPROCESS), percentile=99.9, quiet=True,
        auto=None,
    )


@pytest.mark.parametrize("method", METHODS)
def test_api_writes_the_golden_cache(api_calibration, method, tmp_path):
    out = tmp_path / f"demo.{method}.cache"
    returned = api_calibration.write_cache(out, method=method, trt_version="10.9.0")
    assert returned == out.read_bytes()
    _assert_golden(out, f"demo.{method}.cache")


def test_api_with_tensor_methods_writes_the_golden_cache(demo_model, four_photos, tmp_path):
    cal = trtkld.calibrate(
        demo_model, str(four_photos), ["nvidia"], batch_size=2,
        preprocess=demo.preprocess_options(demo.DEMO_PREPROCESS), tensor_methods=OVERRIDES,
        quiet=True,
    )
    out = tmp_path / "demo.override.cache"
    cal.write_cache(out, trt_version="8.6.1", algorithm="MinMaxCalibration")
    _assert_golden(out, "demo.override.cache")
    assert cal.results["nvidia"]["x"].method == "max"


def test_cli_writes_the_golden_caches(four_photos, tmp_path, capsys):
    code = main(["calibrate", "--demo", "--data", str(four_photos), "--batch-size", "2",
                 "--method", ",".join(METHODS), "--percentile", "99.9", "--trt-version",
                 "10.9.0", "--out", str(tmp_path / "demo.{method}.cache"), "--table", "none",
                 "--auto-by", "histogram", "-q"])
    assert code == 0, capsys.readouterr().err
    for method in METHODS:
        _assert_golden(tmp_path / f"demo.{method}.cache", f"demo.{method}.cache")
    args = ["calibrate", "--demo", "--data", str(four_photos), "--batch-size", "2",
            "--method", "nvidia", "--trt-version", "8.6.1", "--algorithm", "MinMaxCalibration",
            "--out", str(tmp_path / "demo.override.cache"), "--table", "none", "-q"]
    for pattern, method in OVERRIDES.items():
        args += ["--tensor-method", f"{pattern}={method}"]
    assert main(args) == 0, capsys.readouterr().err
    _assert_golden(tmp_path / "demo.override.cache", "demo.override.cache")


def test_histograms_round_trip_and_search_again(api_calibration, tmp_path):
    """Saved histograms searched again give the same thresholds: no model, no data."""
    path = tmp_path / "demo.hist.npz"
    api_calibration.histograms.save(path)
    from trtkld.histogram import HistogramSet

    again = trtkld.calibrate(None, histograms=HistogramSet.load(path), methods="ppq,auto",
                             percentile=99.9)
    for method in ("ppq", "auto"):
        assert again.scales(method) == api_calibration.scales(method)
    out = tmp_path / "again.cache"
    again.write_cache(out, method="auto", trt_version="10.9.0")
    _assert_golden(out, "demo.auto.cache")
    with pytest.raises(DataError, match="pass model="):
        again.to_qdq(tmp_path / "q.onnx", method="ppq")


def test_to_qdq_uses_the_method_scales(api_calibration, tmp_path):
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "demo.int8.onnx"
    summary = api_calibration.to_qdq(out, method="mse")
    scales = api_calibration.scales("mse")
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in summary.activations:
            value = numpy_helper.to_array(inits[node.input[1]])
            assert value == scales[node.input[0]]
            checked += 1
    assert checked == len(summary.activations) > 0


@pytest.mark.parametrize("call, match", [
    (lambda cal: cal.write_cache("x.cache"), "name one with method="),
    (lambda cal: cal.scales("kl"), "was not calibrated"),
])
def test_method_must_be_named_and_calibrated(api_calibration, call, match):
    with pytest.raises(SearchError, match=match):
        call(api_calibration)


def test_unknown_method_and_bad_option_are_clear_errors(demo_model, four_photos):
    with pytest.raises(SearchError, match=r"unknown method\(s\) \['kl'\]"):
        trtkld.calibrate(demo_model, str(four_photos), ["kl"])
    with pytest.raises(SearchError, match=r"percentile must be in \(0, 100\]"):
        trtkld.calibrate(demo_model, str(four_photos), ["percentile"], percentile=0.0)
    with pytest.raises(SearchError, match="no search method takes option 'bins'"):
        trtkld.calibrate(demo_model, str(four_photos), ["ppq"], bins=10)
