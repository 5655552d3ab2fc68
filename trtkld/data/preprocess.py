"""Image decoding and preprocessing for image-folder calibration data.

Pipeline for one file (every step deterministic, arithmetic in float32):

1. decode with Pillow, apply the EXIF orientation, take the first frame;
2. convert to RGB (3-channel models) or L (1-channel models): grayscale, palette, CMYK and
   RGBA images are converted by Pillow (alpha is dropped);
3. resize with Pillow's filter (BILINEAR by default; Pillow antialiases when downscaling, unlike
   OpenCV's INTER_LINEAR): ``resize=N`` scales the short side to N (the long side to
   ``floor(long * N / short + 0.5)``), ``resize=(H, W)`` resizes to exactly H x W;
4. centre crop to ``crop=(H, W)``: top = (h - H) // 2, left = (w - W) // 2;
5. ``x = (pixel * scale - mean[c]) / std[c]`` with pixel in 0..255, after the RGB -> BGR swap when
   ``channel_order="BGR"``: ``mean``/``std`` are given per MODEL channel, in the order the
   model sees them (so the ``caffe`` preset lists B, G, R means);
6. HWC -> CHW for NCHW models, then cast to the model input's dtype.

Defaults are taken from the model input (see :meth:`PreprocessOptions.resolve`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Optional, Union

import numpy as np

from trtkld.data.specs import InputSpec
from trtkld.errors import DataError

AUTO = "auto"
SizeOpt = Union[int, tuple[int, int], str, None]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)

_PRESETS: dict[str, dict] = {
    # torchvision / timm / PaddleClas convention
    "imagenet": dict(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD, channel_order="RGB"),
    # Caffe models (VGG, ResNet-Caffe, open_nsfw): BGR, 0..255 minus the BGR channel means
    "caffe": dict(scale=1.0, mean=CAFFE_MEAN_BGR, std=(1.0,), channel_order="BGR"),
    # pixels as 0..1 / 0..255 without mean or std
    "unit": dict(scale=1 / 255, mean=(0.0,), std=(1.0,), channel_order="RGB"),
    "raw": dict(scale=1.0, mean=(0.0,), std=(1.0,), channel_order="RGB"),
}

# Ratio used by the ImageNet evaluation recipe (resize 256, crop 224).
_RESIZE_PER_CROP = 256 / 224

_RESAMPLE_NAMES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")

# Upper bound for a crop or resize side: far above any network input, yet a typo such as
# --crop 100000 (a 39 GB float image) fails up front instead of being killed for memory.
MAX_IMAGE_SIDE = 16384
# Pixels of one image after resizing; Pillow's own decompression-bomb limit is the same order.
MAX_RESIZED_PIXELS = 2**27


@dataclass(frozen=True)
class PreprocessOptions:
    """How image files become model input tensors. ``"auto"``/``None`` fields are resolved
    against the model input by :meth:`resolve`.

    resize: ``"auto"``, short side ``N`` (int), exact ``(H, W)``, or ``None`` (no resize;
        the strings ``"none"``/``"off"`` mean the same, for command lines).
        Auto: ``round(crop_short * 256 / 224)`` when cropping, else the model's fixed (H, W)
        when there is no crop, else no resize (dynamic H/W: native image size).
    crop: ``"auto"`` (the model's fixed (H, W) when square; none when dynamic, and none when
        the fixed input is not square and ``resize`` is auto too -- such models then get a
        plain resize to (H, W)), ``N`` (square), ``(H, W)``, or ``None``.
    scale, mean, std: normalisation ``(pixel * scale - mean) / std``; ``None`` means the
        ImageNet preset for float inputs and raw pixels for integer inputs. ``mean``/``std``
        hold one value per model channel (or a single value for all channels).
    channel_order: ``"RGB"`` or ``"BGR"`` (ignored for 1-channel models).
    layout: ``"auto"`` (dim 1 == 3 -> NCHW, last dim == 3 -> NHWC, then the same with 1),
        ``"NCHW"`` or ``"NHWC"``.
    dtype: output dtype; ``None`` = the model input's dtype.
    resample: Pillow filter name: nearest, bilinear (default), bicubic, lanczos, box, hamming.
    """

    resize: SizeOpt = AUTO
    crop: SizeOpt = AUTO
    scale: Optional[float] = None
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    channel_order: str = "RGB"
    layout: str = AUTO
    dtype: Optional[Union[str, np.dtype, type]] = None
    resample: str = "bilinear"

    @classmethod
    def preset(cls, name: str, **overrides) -> PreprocessOptions:
        """A named normalisation (``imagenet``, ``caffe``, ``unit``, ``raw``) plus overrides,
        e.g. ``PreprocessOptions.preset("caffe", resize=(256, 256))``."""
        key = name.lower()
        if key not in _PRESETS:
            raise DataError(
                f"unknown preprocessing preset {name!r}: expected one of {', '.join(_PRESETS)}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DataError(f"unknown preprocessing option(s) {unknown}: expected {sorted(known)}")
        return cls(**{**_PRESETS[key], **overrides})

    @staticmethod
    def preset_names() -> tuple[str, ...]:
        return tuple(_PRESETS)

    def resolve(self, spec: InputSpec) -> ImagePipeline:
        """Fill every ``auto``/``None`` field from ``spec`` and check the options; raises
        :class:`DataError` naming the input when the model input cannot take images."""
        return _resolve(self, spec)


@dataclass(frozen=True)
class ImagePipeline:
    """Fully resolved preprocessing for one model input (see module docstring)."""

    input_name: str
    layout: str                          # "NCHW" | "NHWC"
    channels: int                        # 1 or 3
    resize: Optional[tuple[str, tuple[int, ...]]]   # ("short", (N,)) | ("exact", (H, W)) | None
    crop: Optional[tuple[int, int]]      # (H, W)
    scale: np.float32
    mean: np.ndarray                     # float32 (C,)
    std: np.ndarray                      # float32 (C,)
    channel_order: str
    dtype: np.dtype
    resample: str

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step for an image of the given size."""
        if self.resize is None:
            return width, height
        kind, size = self.resize
        if kind == "exact":
            return size[1], size[0]
        short = size[0]
        if width <= height:
            return short, max(1, math.floor(height * short / width + 0.5))
        return max(1, math.floor(width * short / height + 0.5)), short

    def sample_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """Shape of one preprocessed sample (no batch axis) for an image of this size."""
        w, h = self.resized_size(width, height)
        if self.crop is not None:
            h, w = self.crop
        return (self.channels, h, w) if self.layout == "NCHW" else (h, w, self.channels)

    def describe(self) -> dict:
        """Every resolved setting as plain JSON values (recorded in a cache's sidecar)."""
        return {
            "input": self.input_name,
            "layout": self.layout,
            "channels": self.channels,
            "resize": None if self.resize is None else [self.resize[0], list(self.resize[1])],
            "crop": None if self.crop is None else list(self.crop),
            "scale": float(self.scale),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "channel_order": self.channel_order,
            "dtype": str(self.dtype),
            "resample": self.resample,
        }

    def check_size(self, width: int, height: int, path: str) -> None:
        """DataError naming ``path`` when the resized image is smaller than the crop or larger
        than :data:`MAX_RESIZED_PIXELS`."""
        w, h = self.resized_size(width, height)
        if w * h > MAX_RESIZED_PIXELS:
            raise DataError(
                f"image {path!r}: {width}x{height} (WxH) resizes to {w}x{h}, more than "
                f"{MAX_RESIZED_PIXELS} pixels; set a smaller resize"
            )
        if self.crop is None:
            return
        if h < self.crop[0] or w < self.crop[1]:
            raise DataError(
                f"image {path!r}: {w}x{h} (WxH) after resizing is smaller than the centre crop "
                f"{self.crop[1]}x{self.crop[0]} for input {self.input_name!r}; set a larger "
                "resize or a smaller crop"
            )

    def load(self, path: Union[str, os.PathLike]) -> np.ndarray:
        """Decode and preprocess one image file -> array of :meth:`sample_shape`."""
        path = os.fspath(path)
        image = open_image(path, self.channels)
        return self.apply(image, path)

    def apply(self, image, path: str = "<image>") -> np.ndarray:
        """Preprocess a decoded PIL image already in mode RGB/L (see :func:`open_image`)."""
        from PIL import Image

        self.check_size(image.width, image.height, path)
        size = self.resized_size(image.width, image.height)
        if size != (image.width, image.height):
            resample = getattr(Image.Resampling, self.resample.upper())
            image = image.resize(size, resample=resample)
        if self.crop is not None:
            ch, cw = self.crop
            top = (image.height - ch) // 2
            left = (image.width - cw) // 2
            image = image.crop((left, top, left + cw, top + ch))
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.channels == 3 and self.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        out = (pixels * self.scale - self.mean) / self.std
        if self.layout == "NCHW":
            out = out.transpose(2, 0, 1)
        if self.dtype.kind in "iub":
            info = np.iinfo(self.dtype) if self.dtype.kind != "b" else None
            if info is not None and (out.min() < info.min or out.max() > info.max):
                raise DataError(
                    f"image {path!r}: preprocessed values [{out.min()}, {out.max()}] do not fit "
                    f"input {self.input_name!r} dtype {self.dtype}"
                )
            out = np.rint(out)
        return np.ascontiguousarray(out.astype(self.dtype))


def _bomb_error():
    from PIL import Image

    return Image.DecompressionBombError


def open_image(path: str, channels: int = 3):
    """Decode ``path`` fully with Pillow into mode RGB (``channels=3``) or L (``channels=1``),
    EXIF orientation applied. 16-bit images (modes ``I;16*`` and ``I``) are scaled to the 8-bit
    range (``round(v / 257)``) rather than clipped. Raises :class:`DataError` naming the file
    when it is unreadable or larger than Pillow's decompression-bomb limit."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            image = _to_8bit(image)
            image = image.convert("RGB" if channels == 3 else "L")
    except _bomb_error() as exc:
        raise DataError(f"image {path!r}: too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {path!r}: cannot be decoded ({exc})") from exc
    return image


def _to_8bit(image):
    """A 16-bit (``I;16``, ``I;16B``, ``I;16L``) or 32-bit integer (``I``, as 16-bit PNGs
    decode on some Pillow versions) greyscale image as 8-bit ``L`` over the full 16-bit range:
    Pillow's own convert("L"/"RGB") clips these at 255, turning most pixels white."""
    from PIL import Image

    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    values = np.asarray(image).astype(np.float64)
    eight = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(eight, mode="L")


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file header, after EXIF orientation; DataError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(0x0112, 1)
            except Exception:  # a broken EXIF block is not fatal: decoding will tell
                orientation = 1
    except _bomb_error() as exc:
        raise DataError(f"image {path!r}: too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {path!r}: not a readable image ({exc})") from exc
    # EXIF orientations 5..8 transpose the image.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _size_pair(value, what: str, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pair = (int(value[0]), int(value[1]))
    else:
        raise DataError(f"input {name!r}: {what} must be an int or (H, W), found {value!r}")
    if min(pair) <= 0:
        raise DataError(f"input {name!r}: {what} must be positive, found {value!r}")
    if max(pair) > MAX_IMAGE_SIDE:
        raise DataError(
            f"input {name!r}: {what} {value!r} exceeds the limit of {MAX_IMAGE_SIDE} pixels a side"
        )
    return pair


def _channel_values(values, channels: int, what: str, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise DataError(
            f"input {name!r}: {what} needs 1 or {channels} values (one per model channel), "
            f"found {arr.size}"
        )
    if not np.all(np.isfinite(arr)):
        raise DataError(f"input {name!r}: {what} must be finite, found {arr.tolist()}")
    return arr.astype(np.float32)


def _detect_layout(spec: InputSpec, layout: str) -> tuple[str, int]:
    shape = spec.shape
    if layout == AUTO:
        for channels in (3, 1):
            if shape[1] == channels:
                return "NCHW", channels
            if shape[3] == channels:
                return "NHWC", channels
        raise DataError(
            f"input {spec.name!r} {spec.shape_str()}: cannot tell the channel axis (expected dim 1 "
            "or the last dim to be 3 or 1); set the layout to NCHW or NHWC"
        )
    axis = 1 if layout == "NCHW" else 3
    channels = shape[axis]
    if channels is None or isinstance(channels, str):
        return layout, 3
    if channels not in (1, 3):
        raise DataError(
            f"input {spec.name!r} {spec.shape_str()}: layout {layout} puts {channels} channels on "
            f"axis {axis}; images give 1 or 3"
        )
    return layout, channels


def _off(value) -> SizeOpt:
    """"none"/"off" (as a command line gives them) mean None: no resize / no crop."""
    if isinstance(value, str) and value.lower() in ("none", "off"):
        return None
    return value


def _resolve(opts: PreprocessOptions, spec: InputSpec) -> ImagePipeline:
    name = spec.name
    opts = PreprocessOptions(**{**opts.__dict__, "resize": _off(opts.resize),
                                "crop": _off(opts.crop)})
    if spec.rank != 4:
        raise DataError(
            f"input {name!r} {spec.shape_str()}: images need a rank-4 input (NCHW or NHWC), "
            f"found rank {spec.rank}"
        )
    layout = opts.layout.upper() if isinstance(opts.layout, str) else opts.layout
    if layout not in (AUTO.upper(), "NCHW", "NHWC"):
        raise DataError(f"input {name!r}: layout must be auto, NCHW or NHWC, found {opts.layout!r}")
    layout, channels = _detect_layout(spec, AUTO if layout == "AUTO" else layout)
    h_dim, w_dim = (spec.shape[2], spec.shape[3]) if layout == "NCHW" else spec.shape[1:3]
    fixed_hw = (h_dim, w_dim) if isinstance(h_dim, int) and isinstance(w_dim, int) else None

    crop = fixed_hw if opts.crop == AUTO else (
        None if opts.crop is None else _size_pair(opts.crop, "crop", name))
    if (opts.crop == AUTO and opts.resize == AUTO and fixed_hw is not None
            and fixed_hw[0] != fixed_hw[1]):
        # A non-square input (detectors, layout models: 800x608) is not an ImageNet classifier:
        # resize-short-side-then-centre-crop would cut the page or fail on landscape images,
        # so the default is the one such models' own code uses, a plain resize to (H, W).
        crop = None

    if opts.resize == AUTO:
        if crop is not None:
            resize = ("short", (math.floor(min(crop) * _RESIZE_PER_CROP + 0.5),))
        elif fixed_hw is not None:
            resize = ("exact", fixed_hw)
        else:
            resize = None
    elif opts.resize is None:
        resize = None
    elif isinstance(opts.resize, (int, np.integer)) and not isinstance(opts.resize, bool):
        if not 0 < int(opts.resize) <= MAX_IMAGE_SIDE:
            raise DataError(f"input {name!r}: resize must be between 1 and {MAX_IMAGE_SIDE}, "
                            f"found {opts.resize!r}")
        resize = ("short", (int(opts.resize),))
    else:
        resize = ("exact", _size_pair(opts.resize, "resize", name))
    if resize is not None and crop is not None:
        too_small = (resize[1][0] < min(crop)) if resize[0] == "short" else (
            resize[1][0] < crop[0] or resize[1][1] < crop[1])
        if too_small:
            raise DataError(
                f"input {name!r}: resize {resize[1]} is smaller than the centre crop {crop}"
            )

    dtype = np.dtype(opts.dtype) if opts.dtype is not None else spec.dtype
    raw = dtype.kind in "iub"
    scale = opts.scale if opts.scale is not None else (1.0 if raw else 1 / 255)
    mean = opts.mean if opts.mean is not None else ((0.0,) if raw else IMAGENET_MEAN)
    std = opts.std if opts.std is not None else ((1.0,) if raw else IMAGENET_STD)
    if channels == 1 and opts.mean is None and not raw:
        mean, std = (float(np.mean(IMAGENET_MEAN)),), (float(np.mean(IMAGENET_STD)),)
    if not (isinstance(scale, (int, float, np.number)) and math.isfinite(scale) and scale != 0):
        raise DataError(f"input {name!r}: scale must be a finite non-zero number, found {scale!r}")
    std_arr = _channel_values(std, channels, "std", name)
    if np.any(std_arr == 0):
        raise DataError(f"input {name!r}: std must be non-zero, found {std_arr.tolist()}")
    order = str(opts.channel_order).upper()
    if order not in ("RGB", "BGR"):
        raise DataError(f"input {name!r}: channel_order must be RGB or BGR, found {order!r}")
    resample = str(opts.resample).lower()
    if resample not in _RESAMPLE_NAMES:
        raise DataError(
            f"input {name!r}: resample must be one of {', '.join(_RESAMPLE_NAMES)}, "
            f"found {opts.resample!r}"
        )
    return ImagePipeline(
        input_name=name,
        layout=layout,
        channels=channels,
        resize=resize,
        crop=crop,
        scale=np.float32(scale),
        mean=_channel_values(mean, channels, "mean", name),
        std=std_arr,
        channel_order=order,
        dtype=dtype,
        resample=resample,
    )

