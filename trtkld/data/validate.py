"""Checking arrays against :class:`InputSpec` and splitting items into samples.

Dtype rule (for .npy/.npz/loader data; images are produced in the model dtype):

* the exact dtype is used as is;
* a cast numpy calls "safe" (uint8 -> float32, float16 -> float32, int32 -> int64, ...) is done;
* float64 -> float32/float16 is done when every value stays finite (numpy's default float64
  arrays are the usual cause; values are rounded to the nearest representable float);
* anything else (float -> int, int64 -> int32, ...) is a :class:`DataError`.

Non-finite values (NaN/Inf) in float inputs are a DataError unless ``allow_nonfinite`` (e.g.
attention masks holding -inf).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Optional

import numpy as np

from trtkld.data.specs import InputSpec, format_shape
from trtkld.errors import DataError

Sample = tuple[dict[str, np.ndarray], str]   # (name -> array without batch axis, source label)


def describe_sources(sources: Sequence[str], limit: int = 3) -> str:
    """``'a.jpg', 'b.jpg' and 6 more`` for error messages."""
    unique = list(dict.fromkeys(sources))
    shown = ", ".join(repr(s) for s in unique[:limit])
    if len(unique) > limit:
        shown += f" and {len(unique) - limit} more"
    return shown or "<no source>"


def check_dtype(found: np.dtype, spec: InputSpec, label: str) -> bool:
    """Raise DataError if ``found`` cannot be converted to ``spec.dtype`` under the module's
    rule; return True when a conversion is needed."""
    expected = spec.dtype
    if found == expected:
        return False
    if np.can_cast(found, expected, casting="safe"):
        return True
    if found.kind == "f" and expected.kind == "f":
        return True
    raise DataError(
        f"{label}: input {spec.name!r} expects dtype {expected}, found {found} "
        "(only exact, safe, or float-to-float conversions are done; convert the data)"
    )


def convert(arr: np.ndarray, spec: InputSpec, label: str) -> np.ndarray:
    """``arr`` cast to ``spec.dtype`` (after :func:`check_dtype` allowed it)."""
    if arr.dtype == spec.dtype:
        return arr
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(spec.dtype)
    if arr.dtype.kind == "f" and spec.dtype.kind == "f":
        overflow = np.isfinite(arr) & ~np.isfinite(out)
        if overflow.any():
            raise DataError(
                f"{label}: input {spec.name!r}: {int(overflow.sum())} value(s) such as "
                f"{arr[overflow].flat[0]!r} overflow {spec.dtype} when converting from {arr.dtype}"
            )
    return out


def check_finite(arr: np.ndarray, name: str, label: str) -> None:
    """DataError when a float array holds NaN or +-Inf (counts given)."""
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    nan = int(np.isnan(arr).sum())
    posinf = int(np.isposinf(arr).sum())
    neginf = int(np.isneginf(arr).sum())
    raise DataError(
        f"{label}: input {name!r} holds non-finite values (NaN: {nan}, +Inf: {posinf}, "
        f"-Inf: {neginf}); expected finite data (pass allow_nonfinite=True for inputs such as "
        "attention masks that use -inf on purpose)"
    )


def check_names(found: Sequence[str], specs: Sequence[InputSpec], label: str) -> None:
    """DataError naming missing and unexpected input names."""
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in found]
    unexpected = [n for n in found if n not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing input(s) {missing}")
        if unexpected:
            parts.append(f"unexpected name(s) {unexpected}")
        raise DataError(
            f"{label}: {' and '.join(parts)}; the model inputs are {expected}, found {list(found)}"
        )


def check_sample_shape(shape: tuple, spec: InputSpec, label: str) -> None:
    """One sample (no batch axis) against ``spec.shape[1:]``: fixed dims must match."""
    for axis, (want, got) in enumerate(zip(spec.shape[1:], shape), start=1):
        if isinstance(want, int) and want != got:
            raise DataError(
                f"{label}: input {spec.name!r} expects shape {spec.shape_str()}, found sample "
                f"shape {format_shape(shape)} (dim {axis} is {got}, expected {want})"
            )


def split_shape(shape: tuple, spec: InputSpec, label: str) -> tuple[Optional[int], tuple]:
    """(number of samples or None for a single sample, per-sample shape) of an array of
    ``shape`` fed to ``spec``: rank == model rank is a batch, rank - 1 one sample. Raises
    DataError for other ranks, empty batches and fixed dims that differ."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == spec.rank:
        count, sample_shape = shape[0], shape[1:]
        if count == 0:
            raise DataError(f"{label}: input {spec.name!r} holds an empty batch (0 samples)")
    elif len(shape) == spec.rank - 1:
        count, sample_shape = None, shape
    else:
        raise DataError(
            f"{label}: input {spec.name!r} expects rank {spec.rank} {spec.shape_str()} (a "
            f"batch) or rank {spec.rank - 1} (one sample), found shape {format_shape(shape)}"
        )
    check_sample_shape(sample_shape, spec, label)
    return count, sample_shape


def split_item(
    arrays: Mapping[str, np.ndarray],
    specs: Sequence[InputSpec],
    label: str,
    *,
    allow_nonfinite: bool = False,
) -> Iterator[Sample]:
    """Split one item (name -> batch or single sample) into samples, checked and converted.

    For each input an array of the model's rank is a batch (axis 0 = samples); one of rank - 1
    is a single sample. All inputs of an item must hold the same number of samples. Arrays may
    be memory-mapped: rows are read and converted one sample at a time.
    """
    check_names(list(arrays), specs, label)
    counts: dict[str, int] = {}
    prepared: dict[str, tuple[np.ndarray, bool, bool]] = {}
    for spec in specs:
        arr = arrays[spec.name]
        if not isinstance(arr, np.ndarray):
            try:
                arr = np.asarray(arr)
            except Exception as exc:
                raise DataError(
                    f"{label}: input {spec.name!r}: cannot convert {type(arr).__name__} to an "
                    f"array ({exc})"
                ) from exc
        if arr.dtype.kind not in "biuf":
            raise DataError(
                f"{label}: input {spec.name!r} expects dtype {spec.dtype}, found {arr.dtype}"
            )
        count, _ = split_shape(arr.shape, spec, label)
        batched = count is not None
        counts[spec.name] = -1 if count is None else count
        prepared[spec.name] = (arr, batched, check_dtype(arr.dtype, spec, label))
    distinct = set(counts.values())
    if len(distinct) > 1:
        described = ", ".join(
            f"{n!r}: {'1 (single sample)' if c < 0 else c}" for n, c in counts.items())
        raise DataError(
            f"{label}: the inputs hold different numbers of samples ({described}); every input "
            "of one item must hold the same samples"
        )
    count = distinct.pop()
    rows = range(count) if count >= 0 else [None]
    for row in rows:
        sample: dict[str, np.ndarray] = {}
        row_label = label if row is None else f"{label}[{row}]"
        for spec in specs:
            arr, batched, needs_cast = prepared[spec.name]
            value = np.asarray(arr[row] if batched else arr)
            if needs_cast:
                value = convert(value, spec, row_label)
            if not allow_nonfinite:
                check_finite(value, spec.name, row_label)
            sample[spec.name] = value
        yield sample, row_label


def validate_batch(batch_inputs: Mapping[str, np.ndarray], specs: Sequence[InputSpec],
                   sources: Sequence[str], batch_size: int, fixed_batch: bool) -> None:
    """Final check of an assembled batch: names, rank, fixed dims, dtype, batch dim."""
    label = f"batch from {describe_sources(sources)}"
    check_names(list(batch_inputs), specs, label)
    for spec in specs:
        arr = batch_inputs[spec.name]
        if arr.ndim != spec.rank:
            raise DataError(
                f"{label}: input {spec.name!r} expects rank {spec.rank} {spec.shape_str()}, "
                f"found shape {format_shape(arr.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
            if isinstance(want, int) and want != got:
                raise DataError(
                    f"{label}: input {spec.name!r} expects shape {spec.shape_str()}, found "
                    f"{format_shape(arr.shape)} (dim {axis} is {got}, expected {want})"
                )
        if arr.dtype != spec.dtype:
            raise DataError(
                f"{label}: input {spec.name!r} expects dtype {spec.dtype}, found {arr.dtype}"
            )
        if arr.shape[0] > batch_size or (fixed_batch and arr.shape[0] != batch_size):
            raise DataError(
                f"{label}: input {spec.name!r} batch of {arr.shape[0]}, expected "
                f"{'exactly' if fixed_batch else 'at most'} {batch_size}"
            )
