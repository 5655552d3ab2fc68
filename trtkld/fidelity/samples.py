"""Calibration samples kept in memory for repeated held-out measurement, and their folds."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from trtkld.data import PADDING_SUFFIX, Batch
from trtkld.errors import DataError

MAX_CHUNK = 16  # samples per ORT run when the batch dimension is free


def materialize(data: Iterable[Batch]) -> list[dict[str, np.ndarray]]:
    """Every real (non-padding) sample of ``data`` as its own ``{input: (1, ...)}`` dict, in
    data order. Held-out measurement runs them many times, so they are kept in memory."""
    samples = []
    for batch in data:
        for row, source in enumerate(batch.sources):
            if source.endswith(PADDING_SUFFIX):
                continue
            samples.append({k: v[row:row + 1] for k, v in batch.inputs.items()})
    return samples


def fold_indices(num_samples: int, folds: int) -> list[list[int]]:
    """Sample indices of each fold: sample ``i`` is in fold ``i % folds`` (deterministic)."""
    if num_samples < folds:
        raise DataError(f"held-out measurement: {folds} folds need at least {folds} calibration "
                        f"samples, found {num_samples}")
    return [list(range(f, num_samples, folds)) for f in range(folds)]


def batch_limit(model_inputs: Sequence[Any]) -> tuple[int, bool]:
    """(samples per run, whether the batch size is fixed) from the model's input shapes."""
    fixed = [s.shape[0] for s in model_inputs
             if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0]
    return (fixed[0], True) if fixed else (MAX_CHUNK, False)


def chunk_samples(samples: Sequence[Mapping[str, np.ndarray]], size: int, fixed: bool
                  ) -> list[tuple[dict[str, np.ndarray], int]]:
    """Concatenated runs of ``size`` samples: (feeds, number of real rows). With a fixed batch
    size the last run is filled by repeating its last sample (those rows are dropped)."""
    out = []
    for start in range(0, len(samples), size):
        part = list(samples[start:start + size])
        real = len(part)
        if fixed:
            part += [part[-1]] * (size - real)
        out.append(({k: np.concatenate([p[k] for p in part]) for k in part[0]}, real))
    return out


def samples_as_batches(samples: Sequence[Mapping[str, np.ndarray]], size: int, fixed: bool,
                       offset: int) -> list[Batch]:
    """``samples`` as :class:`Batch` objects of ``size`` rows (what the collectors read); the
    rows filling a fixed-size last batch are marked as padding, so nothing counts them twice.
    ``offset`` numbers the sources (``"sample N"``)."""
    batches = []
    for i, (feeds, real) in enumerate(chunk_samples(samples, size, fixed)):
        sources = tuple(f"sample {offset + i * size + j}" for j in range(real))
        sources += tuple(f"fill{PADDING_SUFFIX}" for _ in range(size - real)) if fixed else ()
        batches.append(Batch(feeds, sources))
    return batches
