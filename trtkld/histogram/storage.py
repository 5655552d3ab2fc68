"""HistogramSet <-> .npz file.

Layout (format ``trtkld-histograms``, version 1). Tensor names are stored as data, never as npz
keys (names contain '/', ':', spaces and may collide after sanitising); every array is plain
(no pickle):

    format      () str            "trtkld-histograms"
    version     () int64          1
    names       (T,) str          tensor names, model order
    num_bins    (T,) int64        B per tensor
    counts      (sum B,) int64    every histogram, concatenated in name order
    hist_max    (T,) float64      R per tensor
    min, max    (T,) float64      finite min / max seen (0.0 when none)
    num_values, num_nan, num_posinf, num_neginf   (T,) int64
"""
from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterable

import numpy as np

from trtkld._io import atomic_write, regular_file_problem
from trtkld.errors import HistogramError
from trtkld.histogram.stats import TensorStats
from trtkld.histogram.tensor import TensorHistogram

FORMAT = "trtkld-histograms"
VERSION = 1
_INT_FIELDS = ("num_bins", "num_values", "num_nan", "num_posinf", "num_neginf")
_FLOAT_FIELDS = ("hist_max", "min", "max")


def save_histograms(hists: Iterable[TensorHistogram], path: str | os.PathLike) -> None:
    """Write ``hists`` to ``path`` (exact name, no suffix added), atomically."""
    items = list(hists.values()) if hasattr(hists, "values") else list(hists)
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION, dtype=np.int64),
        "names": np.array([h.name for h in items], dtype=np.str_).reshape(len(items)),
        "num_bins": np.array([h.num_bins for h in items], dtype=np.int64),
        "counts": (
            np.concatenate([h.counts for h in items]) if items else np.zeros(0, np.int64)
        ).astype(np.int64),
        "hist_max": np.array([h.hist_max for h in items], dtype=np.float64),
        "min": np.array([h.min for h in items], dtype=np.float64),
        "max": np.array([h.max for h in items], dtype=np.float64),
        "num_values": np.array([h.num_values for h in items], dtype=np.int64),
        "num_nan": np.array([h.num_nan for h in items], dtype=np.int64),
        "num_posinf": np.array([h.num_posinf for h in items], dtype=np.int64),
        "num_neginf": np.array([h.num_neginf for h in items], dtype=np.int64),
    }
    target = os.fspath(path)
    try:
        # temp file in the same directory, fsync, os.replace, fsync the directory
        atomic_write(target, lambda f: np.savez(f, **arrays))
    except OSError as exc:
        raise HistogramError(f"cannot write histograms to {target!r}: {exc}") from exc


def _bad(path: str, msg: str) -> HistogramError:
    return HistogramError(f"histogram file {path!r}: {msg}")


def load_histograms(path: str | os.PathLike) -> list[TensorHistogram]:
    """Read and validate a file written by :func:`save_histograms`."""
    p = os.fspath(path)
    problem = regular_file_problem(p)
    if problem == "does not exist":
        raise _bad(p, "file not found")
    if problem is not None:  # a FIFO or device would block np.load or never end
        raise _bad(p, problem)
    try:
        archive = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise _bad(p, "file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _bad(p, f"not a readable .npz file ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy array
        raise _bad(p, f"expected a .npz archive, found a {type(archive).__name__}")
    try:
        with archive as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _bad(p, f"corrupt .npz archive ({exc})") from None

    fmt = data.get("format")
    if fmt is None or fmt.shape != () or str(fmt) != FORMAT:
        raise _bad(p, f"expected format {FORMAT!r}, found {None if fmt is None else str(fmt)!r}")
    version = data.get("version")
    if version is None or version.shape != () or int(version) != VERSION:
        raise _bad(p, f"expected version {VERSION}, found {version}")
    required = ("names", "counts", *_INT_FIELDS, *_FLOAT_FIELDS)
    missing = [k for k in required if k not in data]
    if missing:
        raise _bad(p, f"missing arrays {missing}")

    names = data["names"]
    if names.ndim != 1 or names.dtype.kind != "U":
        raise _bad(p, f"'names' must be a 1-D str array, found {names.dtype} {names.shape}")
    t = names.size
    for key in (*_INT_FIELDS, *_FLOAT_FIELDS):
        arr = data[key]
        kind = "iu" if key in _INT_FIELDS else "f"
        if arr.shape != (t,) or arr.dtype.kind not in kind:
            raise _bad(p, f"{key!r} must be ({t},) {'integer' if kind == 'iu' else 'float'}, "
                          f"found {arr.dtype} {arr.shape}")
    counts = data["counts"]
    if counts.ndim != 1 or counts.dtype.kind not in "iu":
        raise _bad(p, f"'counts' must be a 1-D integer array, found {counts.dtype} {counts.shape}")
    bins = data["num_bins"].astype(np.int64)
    if t and int(bins.min()) < 1:
        raise _bad(p, f"num_bins must be >= 1, found {int(bins.min())}")
    if int(bins.sum()) != counts.size:
        raise _bad(p, f"counts has {counts.size} values, num_bins add up to {int(bins.sum())}")
    if len(set(names.tolist())) != t:
        raise _bad(p, "duplicate tensor names")

    out = []
    offsets = np.concatenate([[0], np.cumsum(bins)])
    for i, name in enumerate(names.tolist()):
        lo, hi = float(data["min"][i]), float(data["max"][i])
        nums = {k: int(data[k][i]) for k in ("num_values", "num_nan", "num_posinf", "num_neginf")}
        what = f"tensor {name!r}"
        if any(v < 0 for v in nums.values()):
            raise _bad(p, f"{what}: negative value count {nums}")
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise _bad(p, f"{what}: invalid min/max {lo!r}/{hi!r}")
        stats = TensorStats(
            min=lo,
            max=hi,
            absmax=max(abs(lo), abs(hi)),
            num_finite=nums["num_values"],
            num_nan=nums["num_nan"],
            num_posinf=nums["num_posinf"],
            num_neginf=nums["num_neginf"],
        )
        c = counts[offsets[i] : offsets[i + 1]]
        try:
            h = TensorHistogram(name, hist_max=float(data["hist_max"][i]), counts=c, stats=stats)
        except HistogramError as exc:
            raise _bad(p, str(exc)) from None
        binned = int(h.counts.sum())
        if h.hist_max > 0 and nums["num_values"] and binned != nums["num_values"]:
            # every finite value is binned once (values past hist_max in the last bin);
            # num_values 0 means histograms built from counts alone, without statistics
            raise _bad(p, f"{what}: num_values is {nums['num_values']} but its counts add up to "
                          f"{binned}; the file is inconsistent (edited or corrupt)")
        out.append(h)
    return out
