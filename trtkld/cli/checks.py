"""Checks every sub-command runs before any work: option values (as argparse types, so a bad
value is a usage error at parse time) and output paths (never an input, never each other).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional

logger = logging.getLogger("trtkld")

# TensorRT versions whose Python API has the IInt8 calibrators that read calibration caches.
CALIBRATOR_MAJOR_VERSIONS = (8, 9, 10)


# ------------------------------------------------------------------ option value types
def registry_option(option):
    """The argparse type of a search option from the method registry: its own type, then its
    own check (e.g. ``--percentile`` in (0, 100]), so a bad value is a usage error at parse
    time, before any work."""
    def convert(text: str):
        try:
            value = option.type(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None
        problem = option.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = option.name
    return convert


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (``--memory-budget-mb``, guard limits, ``--peer-memory-mb``)."""
    value = _float(text)
    if not (math.isfinite(value) and value >= 0.0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, found {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (``--max-samples``, ``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text!r}")
    return value


def dtype_name(text: str) -> str:
    """``--dtype``: a numpy dtype name usable for a model input (float16/32/64, ints, uint8)."""
    import numpy as np

    try:
        dtype = np.dtype(text)
    except TypeError:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {text!r}; expected e.g. float32, float16, uint8, int8"
        ) from None
    if dtype.kind not in "fiub":
        raise argparse.ArgumentTypeError(
            f"dtype {text!r} ({dtype}) cannot hold image data; expected a float, int or uint type"
        )
    return text


def trt_version(text: str) -> str:
    """``--trt-version``: MAJOR.MINOR.PATCH that a cache header can encode; a version outside
    the TensorRT releases with calibrators (8.x - 10.x) is accepted with a warning."""
    from trtkld.cache import trt_version_number
    from trtkld.errors import TrtkldError

    parts = text.split(".")
    if len(text) > 16 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected a TensorRT version MAJOR.MINOR.PATCH such as 8.6.1 or 10.9.0, found "
            f"{text!r}"
        )
    if int(parts[0]) > 99:
        raise argparse.ArgumentTypeError(
            f"TensorRT version {text!r}: no TensorRT has a major version above 99"
        )
    try:
        trt_version_number(text)
    except TrtkldError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if int(parts[0]) not in CALIBRATOR_MAJOR_VERSIONS:
        logger.warning(
            "--trt-version %s: no TensorRT release with calibrators (8.x - 10.x) has this "
            "version; the cache header is written for it anyway", text,
        )
    return text


def image_size(text: str):
    """``--resize`` / ``--crop``: N, HxW or none; each side between 1 and MAX_IMAGE_SIDE."""
    from trtkld.data.preprocess import MAX_IMAGE_SIDE

    if text.lower() in ("none", "off"):
        return "none"  # an explicit "no resize/crop", unlike None which means "auto"
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, found {text!r}") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or HxW, found {text!r}")
    if not all(1 <= p <= MAX_IMAGE_SIDE for p in parts):
        raise argparse.ArgumentTypeError(
            f"each side must be between 1 and {MAX_IMAGE_SIDE} pixels, found {text!r}"
        )
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None


# ------------------------------------------------------------------ histogram files
def load_histogram_files(paths: Sequence[str], option: str = "--from-histograms"):
    """The merged HistogramSet of ``paths``; clear errors for an empty file and for shards
    whose ranges differ (which need ``--ranges-from`` when they are collected)."""
    from trtkld.errors import HistogramError
    from trtkld.histogram import HistogramSet

    merged = None
    for path in paths:
        hists = HistogramSet.load(path)
        if len(hists) == 0:
            raise HistogramError(f"{option}: histogram file {path!r} holds no tensors")
        if merged is None:
            merged = hists
            continue
        try:
            merged = merged.merge(hists)
        except HistogramError as exc:
            raise HistogramError(
                f"{option}: cannot merge {path!r} into {paths[0]!r}: {exc}. Shards merge only "
                f"when collected with the same ranges: collect the first shard, then the others "
                f"with --ranges-from FIRST.npz (see README, 'Sharded calibration')"
            ) from None
    return merged


# ------------------------------------------------------------------ output paths
def data_files(data) -> list[str]:
    """The files a CalibrationData reads (none for a data loader)."""
    source = getattr(data, "source", None)
    return list(getattr(source, "paths", None) or [])


def loader_script(spec: Optional[str]) -> list[str]:
    """The script of a ``path/to/script.py:function`` data loader, as an input to protect."""
    if not spec or ":" not in spec:
        return []
    target = spec.rsplit(":", 1)[0]
    return [target] if os.path.isfile(target) else []


def check_outputs(
    outputs: Mapping[str, Optional[str]],
    inputs: Mapping[str, Iterable[Optional[str]]],
    *,
    folders: Iterable[str] = (),
) -> None:
    """Refuse, before any work, output paths that would lose a user's file or fail late.

    ``outputs`` maps a label (e.g. ``"--out"``) to a path the run will write; ``inputs`` maps a
    label (e.g. ``"the model"``) to the files it reads; None entries (options not given) are
    left out. Raises :class:`OutputPathError` naming both paths when an output is the same file
    as an input (same inode, or the same resolved path: symlinks followed) or as another output,
    when its folder does not exist or is not writable, when a file output is an existing folder
    (a folder output, labels in ``folders``, an existing file), or when it is a read-only file.
    Overwriting a previous output of trtkld is allowed: only inputs and the run's other outputs
    are protected.
    """
    from trtkld._io import same_file
    from trtkld.errors import OutputPathError

    folder_labels = set(folders)
    input_items = [(label, os.fspath(p)) for label, paths in inputs.items() for p in paths if p]
    seen: list[tuple[str, str]] = []
    for label, raw in outputs.items():
        if not raw:
            continue
        path = os.fspath(raw)
        for in_label, in_path in input_items:
            if same_file(path, in_path):
                raise OutputPathError(
                    f"{label} {path!r} is {in_label} {in_path!r}: writing it would destroy an "
                    f"input; choose another output path"
                )
        for other_label, other in seen:
            if same_file(path, other):
                raise OutputPathError(
                    f"{label} {path!r} and {other_label} {other!r} are the same file; each "
                    f"output needs its own path"
                )
        seen.append((label, path))
        is_folder = label in folder_labels
        if os.path.isdir(path) and not is_folder:
            raise OutputPathError(f"{label} {path!r} is a folder, expected a file path")
        if is_folder and os.path.exists(path) and not os.path.isdir(path):
            raise OutputPathError(f"{label} {path!r} exists and is not a folder")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise OutputPathError(
                f"{label} {path!r}: folder {parent!r} does not exist (create it first)"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputPathError(f"{label} {path!r}: folder {parent!r} is not writable")
        if os.path.exists(path) and not is_folder and not os.access(path, os.W_OK):
            # os.replace would succeed in a writable folder; a read-only file says "keep me"
            raise OutputPathError(f"{label} {path!r} exists and is read-only")
