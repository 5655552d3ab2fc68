"""`calibrate` and `qdq` take `--model-preset NAME` like `eval`: the bundled model with its own
preprocessing and calibration data, output in the current folder (real ddddocr recognizer)."""
from __future__ import annotations

import hashlib
import importlib.util
import json

import onnx
import pytest

from trtkld import demo
from trtkld.cli.main import main


@pytest.fixture(scope="module")
def ocr_rec() -> demo.BundledModel:
    if importlib.util.find_spec("ddddocr") is None:
        pytest.skip("ddddocr is not installed (pip install --no-deps ddddocr==1.6.1, as .ci/run "
                    "does)")
    return demo.bundled_model("ocr-rec")


def _explicit_flags(bundled: demo.BundledModel) -> list[str]:
    """The preset's model, data and preprocessing spelled out as plain flags."""
    pre = dict(bundled.preprocess)
    assert pre == {"preset": "unit", "resample": "lanczos"}   # the flags below say exactly this
    return [str(bundled.locate()), "--data", str(bundled.calib_dir),
            "--preset", pre["preset"], "--resample", pre["resample"]]


def test_calibrate_model_preset_writes_the_explicit_flags_cache_bytes(ocr_rec, tmp_path,
                                                                       monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = ["--method", "ppq", "--trt-version", "10.13.3", "--quiet", "--table", "none"]
    assert main(["calibrate", "--model-preset", "ocr-rec"] + common) == 0
    preset_cache = tmp_path / "ocr-rec.cache"          # default output: the current folder
    assert preset_cache.is_file()
    explicit_cache = tmp_path / "explicit.cache"
    assert main(["calibrate"] + _explicit_flags(ocr_rec) + common
                + ["--out", str(explicit_cache)]) == 0
    capsys.readouterr()
    assert preset_cache.read_bytes() == explicit_cache.read_bytes()
    assert len(preset_cache.read_bytes().splitlines()) > 10    # a real cache, many tensors
    # Made from the same model and the same data, preprocessed the same way.
    from trtkld.cache.sidecar import sidecar_path

    sides = [json.loads(sidecar_path(p).read_text()) for p in (preset_cache, explicit_cache)]
    for key in ("model_sha256", "data_sha256", "data"):
        assert sides[0][key] == sides[1][key], key
    assert sides[0]["model_sha256"] and sides[0]["data_sha256"]


def test_calibrate_model_preset_keeps_the_output_checks(ocr_rec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = ocr_rec.locate()
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    assert main(["calibrate", "--model-preset", "ocr-rec", "--out", str(model),
                 "--trt-version", "10.13.3"]) == 2
    assert "model" in capsys.readouterr().err
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before
    image = next(p for p in sorted(ocr_rec.calib_dir.iterdir()) if p.suffix == ".png")
    assert main(["calibrate", "--model-preset", "ocr-rec", "--out", str(image),
                 "--trt-version", "10.13.3"]) == 2
    assert "calibration data file" in capsys.readouterr().err
    assert main(["calibrate", "--model-preset", "ocr-rec", "--from-histograms", "h.npz"]) == 2
    assert "--model-preset" in capsys.readouterr().err
    assert main(["calibrate", "--demo", "--model-preset", "ocr-rec"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())                 # nothing written by a refused run


def test_qdq_model_preset_matches_the_explicit_flags(ocr_rec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["qdq", "--model-preset", "ocr-rec", "--method", "ppq", "--quiet"]) == 0
    preset_model = tmp_path / "ocr-rec.int8.onnx"
    explicit_model = tmp_path / "explicit.int8.onnx"
    assert main(["qdq"] + _explicit_flags(ocr_rec)
                + ["--method", "ppq", "--quiet", "-o", str(explicit_model)]) == 0
    capsys.readouterr()

    def q_scales(path):
        graph = onnx.load(str(path)).graph
        inits = {i.name: onnx.numpy_helper.to_array(i).tobytes() for i in graph.initializer}
        return {n.input[0]: inits[n.input[1]] for n in graph.node if n.op_type == "QuantizeLinear"}

    got = q_scales(preset_model)
    assert len(got) > 5 and got == q_scales(explicit_model)
    # The preset's data is the scales' source: with --cache too there are two.
    assert main(["qdq", "--model-preset", "ocr-rec", "--data", str(ocr_rec.calib_dir),
                 "--cache", "x.cache"]) == 2
    assert "exactly one source" in capsys.readouterr().err
