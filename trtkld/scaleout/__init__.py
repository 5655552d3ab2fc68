"""Scale-out collection: histograms of a sharded data set, computed on a Ray cluster.

Two passes, as one process does (``trtkld.pipeline.collect_histograms``): pass 1 returns each
shard's statistics (finite min/max/absmax, NaN/Inf counts), the driver merges them into one range
per tensor; pass 2 returns each shard's int64 histograms on those shared ranges, which the
driver sums. Integer sums and min/max are exact and order-independent, and shards are cut where
batches of the whole data start, so the merged histograms -- and every cache searched from
them -- are byte-identical to a one-process run for any number of shards.

Ray is imported only by :func:`collect_histograms_ray` (``pip install 'trtkld[ray]'``).
"""
from __future__ import annotations

from trtkld.scaleout.errors import RayUnavailableError, ScaleOutError, ShardFailedError
from trtkld.scaleout.work import (
    CollectJob,
    ShardRanges,
    merge_histograms,
    merge_ranges,
    shard_histograms,
    shard_ranges,
)

__all__ = [
    "CollectJob",
    "RayUnavailableError",
    "ScaleOutError",
    "ShardFailedError",
    "ShardRanges",
    "collect_histograms_ray",
    "merge_histograms",
    "merge_ranges",
    "shard_histograms",
    "shard_ranges",
]


def __getattr__(name: str):
    # the Ray executor module is imported on first use only; it still imports ray lazily
    if name == "collect_histograms_ray":
        from trtkld.scaleout.ray_executor import collect_histograms_ray

        return collect_histograms_ray
    raise AttributeError(f"module 'trtkld.scaleout' has no attribute {name!r}")
