"""Cutting file-backed calibration data into contiguous shards that batch exactly as the whole.

A shard is a contiguous run of the ordered file list. Shards are cut only where a file starts
*and* a batch of the whole data starts, so every shard forms exactly the batches (including
padding of a fixed batch dim, or dropping) that the whole data forms over the same files: the
histograms of the shards sum to the histograms of the whole, bit for bit.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from trtkld.data.dataset import CalibrationData, batch_starts
from trtkld.data.sources import FileSource
from trtkld.errors import DataError


@dataclass(frozen=True)
class DataShard:
    """One contiguous part of the data: files ``[first_file, first_file + len(paths))``.

    ``data`` reads only these files (lazily: pickling it sends paths and options, not pixels),
    named by absolute paths so that a worker in another working directory finds them.
    ``num_batches`` counts the batches of the whole data that fall in this shard.
    """

    index: int
    first_file: int
    paths: tuple[str, ...]
    num_samples: int
    num_batches: int
    data: CalibrationData

    def describe(self) -> str:
        """``shard 2 (files 10-19 of the list: a.jpg .. b.jpg)`` for messages."""
        last = self.first_file + len(self.paths) - 1
        span = self.paths[0] if len(self.paths) == 1 else f"{self.paths[0]} .. {self.paths[-1]}"
        return (f"shard {self.index} (files {self.first_file}-{last} of the ordered list, "
                f"{len(self.paths)} file(s): {span})")


def plan_shards(data: CalibrationData, num_shards: int) -> list[DataShard]:
    """Split ``data`` into at most ``num_shards`` contiguous shards of about equal batch counts.

    Cuts are allowed only where both a file and a batch of the whole data start. With fewer such
    places than ``num_shards - 1`` (few batches, or files holding several batches' samples
    with batch boundaries inside them) fewer shards are returned. Raises DataError for data that
    is not read from files (a Python data loader cannot be split by file).
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise DataError(f"the number of shards must be a positive integer, found {num_shards!r}")
    source = data.source
    if not isinstance(source, FileSource):
        raise DataError(
            f"{source.description}: only data read from files (an image, .npy or .npz folder or "
            "file) can be sharded; each worker opens its own files. Write the loader's samples "
            "to .npz files, or calibrate without shards"
        )
    per_file = source.file_signatures()
    file_starts, total = [], 0   # sample index where each file starts
    for sigs in per_file:
        file_starts.append(total)
        total += len(sigs)
    flat = [sig for sigs in per_file for sig in sigs]
    group_starts = batch_starts(flat, data.batch_size)
    # batches before each group: a short group of a fixed batch dim is dropped with
    # last_batch="drop", so it is no work and cannot be a shard on its own
    sizes = [b - a for a, b in zip(group_starts, group_starts[1:] + [total])]
    batches_before = [0]
    for size in sizes:
        dropped = data.fixed_batch and size < data.batch_size and data.last_batch == "drop"
        batches_before.append(batches_before[-1] + (0 if dropped else 1))
    num_batches = batches_before[-1]
    group_index = {sample: g for g, sample in enumerate(group_starts)}
    # (file index, batches before it) of every place a shard may start, file 0 first
    cuts = [(f, batches_before[group_index[s]]) for f, s in enumerate(file_starts)
            if s in group_index and per_file[f]]

    chosen = [cuts[0]]
    for k in range(1, num_shards):
        target = k * num_batches / num_shards
        later = [c for c in cuts if chosen[-1][1] < c[1] < num_batches]
        if not later:
            break
        pos = bisect.bisect_left([c[1] for c in later], target)
        options = later[max(pos - 1, 0):pos + 1]
        chosen.append(min(options, key=lambda c: (abs(c[1] - target), c[1])))

    shards = []
    bounds = [f for f, _ in chosen] + [len(per_file)]
    for index, (f0, f1) in enumerate(zip(bounds, bounds[1:])):
        part = data.select_files(f0, f1, absolute=True)
        shards.append(DataShard(
            index=index,
            first_file=f0,
            paths=tuple(part.source.paths),
            num_samples=sum(len(s) for s in per_file[f0:f1]),
            num_batches=len(part),
            data=part,
        ))
    return shards
