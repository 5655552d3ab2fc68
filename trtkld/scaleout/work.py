"""What one shard's task does: plain functions, run by a Ray worker or in-process alike.

Each function opens the model itself and reads only its shard's files (``data`` is a lazily
read :class:`~trtkld.data.CalibrationData`, e.g. a :class:`~trtkld.data.shards.DataShard`'s).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from trtkld.collect import OnnxRuntimeCollector
from trtkld.data import CalibrationData
from trtkld.errors import HistogramError
from trtkld.histogram import AbsmaxTracker, HistogramSet, preload_kernels

# Packages whose version can change the numbers (decoding, preprocessing, the model run,
# binning); driver and workers must agree for the result to equal a one-process run.
RESULT_PACKAGES = ("trtkld", "onnxruntime", "numpy", "pillow", "onnx")


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`RESULT_PACKAGES` in this process ("missing" if absent)."""
    from importlib import metadata

    versions = {}
    for package in RESULT_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


@dataclass(frozen=True)
class CollectJob:
    """What every shard's task needs besides its data: the model and the histogram options.

    model: path of the ONNX file, reachable at this path by every worker; num_bins: histogram
    bins (the largest any requested method needs); include / exclude: tensor-name regexes.
    """

    model: str
    num_bins: int
    include: Optional[tuple[str, ...]] = None
    exclude: Optional[tuple[str, ...]] = None

    def collector(self) -> OnnxRuntimeCollector:
        """The model in ONNX Runtime, every selected tensor exposed (numba's kernels load on a
        background thread meanwhile, as in one process)."""
        preload_kernels()
        return OnnxRuntimeCollector(self.model, include=self.include, exclude=self.exclude)


@dataclass(frozen=True)
class ShardRanges:
    """Pass 1 of one shard (or of several, merged).

    names: calibrated tensors in model order (non-float tensors found by the first run are
    left out); stats: per-tensor statistics (finite min/max/absmax, NaN/Inf counts);
    versions: :func:`package_versions` of the process that computed it.
    """

    names: tuple[str, ...]
    stats: AbsmaxTracker
    versions: dict[str, str] = field(default_factory=dict)

    def absmax(self) -> dict[str, float]:
        """name -> histogram range of pass 2 (finite absmax; 0.0 for all-zero tensors)."""
        return {n: self.stats[n].absmax for n in self.names}


def shard_ranges(job: CollectJob, data: CalibrationData) -> ShardRanges:
    """Pass 1 over one shard: the statistics of every calibrated tensor."""
    collector = job.collector()
    tracker = AbsmaxTracker(collector.tensor_names)
    for batch in data:
        activations = collector.run(batch)
        tracker.update_many(activations)
        del activations  # binned: free it before the next batch's outputs are allocated
    # tensor_names after the first run: tensors whose type was unknown may have been dropped
    names = tuple(n for n in collector.tensor_names if n in tracker)
    return ShardRanges(names, tracker, package_versions())


def merge_ranges(parts: Sequence[ShardRanges]) -> ShardRanges:
    """Pass-1 statistics over every shard (exact: min/max and integer sums)."""
    if not parts:
        raise HistogramError("no shard statistics to merge")
    names = parts[0].names
    for index, part in enumerate(parts[1:], start=1):
        if part.names != names:
            raise HistogramError(
                f"shard {index} calibrates {len(part.names)} tensors, shard 0 {len(names)}; "
                "every shard must run the same model with the same tensor selection"
            )
    stats = parts[0].stats
    for part in parts[1:]:
        stats = stats.merge(part.stats)
    return ShardRanges(names, stats, dict(parts[0].versions))


def shard_histograms(
    job: CollectJob,
    data: CalibrationData,
    hist_max: Mapping[str, float],
    names: Optional[Sequence[str]] = None,
) -> HistogramSet:
    """Pass 2 over one shard: int64 |x| histograms on the shared ranges ``hist_max``.

    ``names``: the tensors of pass 1 (:attr:`ShardRanges.names`). Without it, ``hist_max`` was
    given by the user instead of pass 1 (one model pass only) and must cover every tensor the
    model exposes, as in ``collect_histograms(..., hist_max=...)``.
    """
    collector = job.collector()
    if names is None:
        hists = HistogramSet.from_given_ranges(collector.tensor_names, hist_max, job.num_bins)
        for batch in data:
            activations = collector.run(batch)
            hists.update_many(activations)
            del activations
        return hists
    hists = HistogramSet.from_absmax({n: hist_max[n] for n in names}, job.num_bins)
    for batch in data:
        activations = collector.run(batch)
        hists.update_many({n: activations[n] for n in names})
        del activations
    return hists


def merge_histograms(parts: Sequence[HistogramSet]) -> HistogramSet:
    """Sum of the shards' histograms, in shard order (exact: int64 counts, min/max)."""
    if not parts:
        raise HistogramError("no shard histograms to merge")
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    return merged
