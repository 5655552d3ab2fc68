"""Building the bundled image sets: ``calib_data/`` (downscaled photos) and ``eval_data/``
(deterministic augmentations of OTHER photos, for fidelity evaluation on unseen data).

The photos come from wheels the test extras install (scikit-image, scikit-learn, matplotlib).
``tools/make_calib_data.py`` and ``tools/make_eval_data.py`` call :func:`make_calib_set` and
:func:`make_eval_set`; the outputs are committed, so these only need rerunning to change them.
Output bytes depend on the Pillow/libjpeg version; the pixels are reproducible to within JPEG
rounding.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trtkld.errors import DataError


@dataclass(frozen=True)
class PhotoSource:
    """One source photo inside an installed package."""

    stem: str           # output file stem
    package: str        # top-level package that ships it
    relpath: str        # path inside the package
    licence: str        # licence / origin, as documented by the shipping package


CALIB_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", "skimage", "data/astronaut.png",
                "Public domain (NASA; 'no known copyright restrictions', skimage.data.astronaut)"),
    PhotoSource("chelsea", "skimage", "data/chelsea.png",
                "CC0, photographer Stefan van der Walt (skimage.data.chelsea)"),
    PhotoSource("coffee", "skimage", "data/coffee.png",
                "CC0, photographer Rachel Michetti, courtesy Pikolo Espresso Bar "
                "(skimage.data.coffee)"),
    PhotoSource("rocket", "skimage", "data/rocket.jpg",
                "Public domain (SpaceX launch photo of DSCOVR, skimage.data.rocket)"),
    PhotoSource("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg",
                "Public domain (NASA, skimage.data.hubble_deep_field)"),
    PhotoSource("retina", "skimage", "data/retina.jpg",
                "CC0 1.0 (Wikimedia Commons, Mikael Haggstrom; skimage.data.retina)"),
    PhotoSource("china", "sklearn", "datasets/images/china.jpg",
                "CC BY 2.0, 'Some rights reserved by danielbuechele' "
                "(https://www.flickr.com/photos/danielbuechele/6061409035; "
                "sklearn/datasets/images/README.txt)"),
    PhotoSource("camera", "skimage", "data/camera.png",
                "CC0, photographer Lav Varshney (skimage.data.camera); grayscale"),
    PhotoSource("coins", "skimage", "data/coins.png",
                "No known copyright restrictions (Brooklyn Museum collection, "
                "skimage.data.coins); grayscale"),
    PhotoSource("brick", "skimage", "data/brick.png",
                "CC0 (CC0Textures Bricks25, skimage.data.brick); grayscale"),
    PhotoSource("grass", "skimage", "data/grass.png",
                "CC0 (DeviantArt linolafett Grass-01, skimage.data.grass); grayscale"),
    PhotoSource("gravel", "skimage", "data/gravel.png",
                "CC0 (CC0Textures Gravel04, skimage.data.gravel); grayscale"),
)

EVAL_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("flower", "sklearn", "datasets/images/flower.jpg",
                "CC BY 2.0, 'Some rights reserved by vultilion' "
                "(https://www.flickr.com/photos/vultilion/6056698931; "
                "sklearn/datasets/images/README.txt)"),
    PhotoSource("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
                "Public domain: U.S. Navy official portrait of Commodore Grace M. Hopper (work of "
                "the U.S. federal government, per Wikimedia Commons; the matplotlib wheel states "
                "no licence)"),
    PhotoSource("ihc", "skimage", "data/ihc.png",
                "No known copyright restrictions (CMMI immunohistochemistry micrograph, "
                "skimage.data.immunohistochemistry)"),
    PhotoSource("clock", "skimage", "data/clock_motion.png",
                "Public domain, photographer Stefan van der Walt (skimage.data.clock); grayscale"),
)

CALIB_SHORT_SIDE = 384
EVAL_SHORT_SIDE = 288
JPEG_QUALITY = 90
EVAL_SEED = 20240611
EVAL_OPS = ("crop", "flip_crop", "rotate", "brightness", "colour")


def locate(source: PhotoSource) -> str:
    """Absolute path of the source photo; DataError when its package is not installed."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"photo {source.stem!r}: package {source.package!r} is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], *source.relpath.split("/"))
    if not os.path.isfile(path):
        raise DataError(f"photo {source.stem!r}: {path!r} not found in {source.package!r}")
    return path


def load_photo(source: PhotoSource):
    """The source photo as a PIL image in mode RGB, or L for grayscale photos."""
    from PIL import Image

    with Image.open(locate(source)) as image:
        image.load()
        return image.convert("L" if image.mode in ("L", "I;16", "1") else "RGB")


def downscale(image, short_side: int):
    """Shrink (never enlarge) so the short side is at most ``short_side`` (Lanczos)."""
    from PIL import Image

    short = min(image.size)
    if short <= short_side:
        return image
    factor = short_side / short
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, resample=Image.Resampling.LANCZOS)


def _crop_fraction(image, fraction: float, fx: float, fy: float):
    """Crop ``fraction`` of each side length, the window placed at relative position fx, fy."""
    w, h = image.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    left, top = round((w - cw) * fx), round((h - ch) * fy)
    return image.crop((left, top, left + cw, top + ch))


def _rotate_inscribed(image, degrees: float):
    """Rotate (bilinear) and keep the largest centred same-aspect window with no empty corners."""
    from PIL import Image

    w, h = image.size
    theta = math.radians(abs(degrees))
    c, s = math.cos(theta), math.sin(theta)
    k = min(w / (w * c + h * s), h / (w * s + h * c))
    rotated = image.rotate(degrees, resample=Image.Resampling.BILINEAR)
    return _crop_fraction(rotated, k * 0.98, 0.5, 0.5)


def eval_params(rng: np.random.Generator, op: str) -> dict:
    """Parameters of one augmentation, rounded so they can be listed exactly in the README."""
    if op in ("crop", "flip_crop"):
        return {"fraction": round(float(rng.uniform(0.6, 0.9)), 3),
                "fx": round(float(rng.uniform(0, 1)), 3), "fy": round(float(rng.uniform(0, 1)), 3)}
    if op == "rotate":
        return {"degrees": round(float(rng.uniform(5, 12) * rng.choice([-1, 1])), 2)}
    if op == "brightness":
        return {"brightness": round(float(rng.choice([rng.uniform(0.55, 0.8),
                                                      rng.uniform(1.2, 1.45)])), 3),
                "contrast": round(float(rng.uniform(0.8, 1.2)), 3)}
    if op == "colour":
        return {"saturation": round(float(rng.uniform(0.4, 1.6)), 3),
                "fraction": round(float(rng.uniform(0.75, 0.95)), 3)}
    raise DataError(f"unknown augmentation {op!r}: expected one of {EVAL_OPS}")


def apply_augmentation(image, op: str, params: dict):
    """One augmentation of a PIL image (deterministic for given params)."""
    from PIL import ImageEnhance, ImageOps

    if op == "crop":
        return _crop_fraction(image, params["fraction"], params["fx"], params["fy"])
    if op == "flip_crop":
        return _crop_fraction(ImageOps.mirror(image), params["fraction"], params["fx"],
                              params["fy"])
    if op == "rotate":
        return _rotate_inscribed(image, params["degrees"])
    if op == "brightness":
        out = ImageEnhance.Brightness(image).enhance(params["brightness"])
        return ImageEnhance.Contrast(out).enhance(params["contrast"])
    if op == "colour":
        out = ImageEnhance.Color(image).enhance(params["saturation"])
        return _crop_fraction(out, params["fraction"], 0.5, 0.5)
    raise DataError(f"unknown augmentation {op!r}: expected one of {EVAL_OPS}")


def eval_plan(sources: Sequence[PhotoSource] = EVAL_SOURCES, seed: int = EVAL_SEED,
              ops: Sequence[str] = EVAL_OPS) -> list[dict]:
    """Rows ``{file, source, op, params}``: every op once per source, parameters drawn from one
    seeded PCG64 stream in source order (so the plan depends only on the seed and the lists)."""
    rng = np.random.default_rng(seed)
    rows = []
    for source in sources:
        for index, op in enumerate(ops):
            rows.append({"file": f"{source.stem}_{index:02d}_{op}.jpg", "source": source.stem,
                         "op": op, "params": eval_params(rng, op)})
    return rows


def render_eval_row(row: dict, sources: Sequence[PhotoSource] = EVAL_SOURCES):
    """The PIL image of one eval_plan row (what make_eval_set writes, before JPEG coding)."""
    source = next(s for s in sources if s.stem == row["source"])
    base = downscale(load_photo(source), 2 * EVAL_SHORT_SIDE)
    out = apply_augmentation(base, row["op"], row["params"])
    return downscale(out, EVAL_SHORT_SIDE)


def _save_jpeg(image, path: str) -> None:
    image.save(path, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)


def make_calib_set(out_dir: str, sources: Sequence[PhotoSource] = CALIB_SOURCES) -> list[dict]:
    """Write ``<stem>.jpg`` for every source (short side <= 384, JPEG q90) and README.md."""
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for source in sources:
        name = f"{source.stem}.jpg"
        image = downscale(load_photo(source), CALIB_SHORT_SIDE)
        _save_jpeg(image, os.path.join(out_dir, name))
        rows.append({"file": name, "source": source, "size": image.size, "mode": image.mode})
    lines = [
        "# calib_data: calibration images",
        "",
        f"{len(rows)} real photographs used by `trtkld calibrate --demo` and the tests. Each is "
        "the source photo converted to JPEG (quality 90), downscaled with Lanczos so the short "
        f"side is at most {CALIB_SHORT_SIDE} px. Grayscale photos stay grayscale (trtkld "
        "converts them to RGB). Regenerate with `python tools/make_calib_data.py`.",
        "",
        "None of these photos is used in `eval_data/` (see its README); a test checks this.",
        "",
        "| file | size (WxH) | source (package: path) | licence / origin |",
        "|---|---|---|---|",
    ]
    for row in rows:
        s = row["source"]
        lines.append(f"| {row['file']} | {row['size'][0]}x{row['size'][1]} | "
                     f"{s.package}: {s.relpath} | {s.licence} |")
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return rows


def make_eval_set(out_dir: str, sources: Sequence[PhotoSource] = EVAL_SOURCES,
                  seed: int = EVAL_SEED) -> list[dict]:
    """Write every :func:`eval_plan` image, ``manifest.json`` and README.md into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    rows = eval_plan(sources, seed)
    for row in rows:
        _save_jpeg(render_eval_row(row, sources), os.path.join(out_dir, row["file"]))
    manifest = {"seed": seed, "generator": "tools/make_eval_data.py",
                "sources": {s.stem: {"package": s.package, "path": s.relpath,
                                     "licence": s.licence} for s in sources},
                "files": rows}
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.write("\n")
    lines = [
        "# eval_data: held-out images for fidelity evaluation",
        "",
        f"{len(rows)} deterministic augmentations (seed {seed}) of {len(sources)} photos that "
        "are NOT in `calib_data/`, so accuracy/fidelity is measured on data the calibration never "
        "saw. Each photo is downscaled (Lanczos) to a short side of at most "
        f"{2 * EVAL_SHORT_SIDE} px, augmented, downscaled to at most {EVAL_SHORT_SIDE} px and "
        "saved as JPEG quality 90. Generated by `python tools/make_eval_data.py` "
        "(`tools/imageset.py: make_eval_set`); `manifest.json` lists the same plan.",
        "",
        "## Sources",
        "",
        "| source | package: path | licence / origin |",
        "|---|---|---|",
    ]
    lines += [f"| {s.stem} | {s.package}: {s.relpath} | {s.licence} |" for s in sources]
    lines += ["", "## Files", "", "| file | source | augmentation | parameters |",
              "|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['source']} | {r['op']} | "
              f"{', '.join(f'{k}={v}' for k, v in r['params'].items())} |" for r in rows]
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return rows
