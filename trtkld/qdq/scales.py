"""Turning a calibration scale into the range ONNX Runtime's QDQ quantizer needs.

TensorRT's cache stores one float32 per tensor, ``scale = amax / 127`` (symmetric INT8, zero point
0).  ONNX Runtime's quantizer does not take a scale; it takes a ``[lowest, highest]`` range and
computes ``scale = float32(float64(highest - lowest) / 254)`` for symmetric INT8.  Feeding
``+-127 * s`` gives ``s`` back for almost every ``s`` but not all of them: ``127 * s`` is rounded
to float32 first, and near some mantissas the float32 grid of ``amax`` is ~0.8% coarser than the
grid of ``s``, so a handful of scales have no float32 ``amax`` that maps back exactly.  We search
the few float32 neighbours of ``127 * s`` with ORT's own ``compute_scale_zp`` (so a change of
ORT's formula cannot silently break bit equality) and report when none works; the caller then
uses ORT's per-tensor ``TensorQuantOverrides`` (scale + zero point given directly).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

INT8_SYMMETRIC_MAX = 127  # TensorRT INT8 is symmetric: codes -127..127, scale = amax / 127

# How many float32 steps either side of float32(127 * s) are tried.  One is enough in every case
# the rounding analysis allows; two is a cheap margin.
_NEIGHBOUR_STEPS = 2


def is_usable_scale(scale: float) -> bool:
    """True when ``scale`` is a finite, positive, normal float32 (what a Q/DQ node may carry).

    ORT replaces a scale below float32's smallest normal number by 1.0, so subnormal scales
    cannot be written faithfully and are rejected here too.
    """
    s = np.float32(scale)
    return bool(np.isfinite(s) and s >= np.finfo(np.float32).tiny)


def ort_symmetric_int8_scale(amax: np.float32) -> np.float32:
    """The activation scale ORT's QDQ quantizer derives from the range ``[-amax, amax]``.

    Calls ORT's own ``compute_scale_zp`` with the arguments its quantizer uses for a symmetric
    INT8 activation (``ActivationSymmetric=True``, no reduce_range).
    """
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, reduce_range=False, symmetric=True)
    a = np.float32(amax)
    _, scale = compute_scale_zp(np.array(-a), np.array(a), qmin, qmax, symmetric=True)
    return np.float32(scale)


def range_for_scale(scale: float) -> Optional[np.float32]:
    """A float32 ``amax`` such that ORT turns ``[-amax, amax]`` into exactly ``float32(scale)``.

    Args:
        scale: the cache scale (activation units per INT8 step), finite and > 0.
    Returns:
        ``amax`` (activation units), or None when no float32 within two steps of ``127 * scale``
        maps back bit-exactly (the caller must then give ORT the scale directly).
    """
    s = np.float32(scale)
    if not is_usable_scale(s):
        raise ValueError(f"scale must be a finite, positive, normal float32; found {scale!r}")
    centre = np.float32(np.float64(s) * INT8_SYMMETRIC_MAX)
    if not math.isfinite(float(centre)):
        return None
    candidates = [centre]
    up = down = centre
    for _ in range(_NEIGHBOUR_STEPS):
        up = np.nextafter(up, np.float32(np.inf), dtype=np.float32)
        down = np.nextafter(down, np.float32(0), dtype=np.float32)
        candidates += [up, down]
    for amax in candidates:
        if ort_symmetric_int8_scale(amax).tobytes() == s.tobytes():
            return np.float32(amax)
    return None
