"""AbsmaxTracker: pass 1 of calibration (finite min/max/absmax and NaN/Inf counts per tensor)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import partial

import numpy as np

from trtkld.errors import HistogramError
from trtkld.histogram._pool import run_tasks, split_parts
from trtkld.histogram.collection import HistogramSet
from trtkld.histogram.stats import TensorStats, tensor_stats


class AbsmaxTracker(Mapping[str, TensorStats]):
    """Ordered mapping tensor name -> running :class:`TensorStats`.

    Names given at construction fix the order (model tensor order); tensors first seen in
    :meth:`update` / :meth:`update_many` are appended in the order they arrive.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._stats: dict[str, TensorStats] = {}
        for n in names:
            if n in self._stats:
                raise HistogramError(f"tensor {n!r} listed twice")
            self._stats[n] = TensorStats()

    def __getitem__(self, name: str) -> TensorStats:
        return self._stats[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._stats)

    def __len__(self) -> int:
        return len(self._stats)

    def update(self, name: str, x: np.ndarray) -> None:
        """Fold the values of one tensor (any shape, float16/32/64) into its statistics."""
        self._stats[name] = self._stats.get(name, TensorStats()).merge(tensor_stats(x, name=name))

    def update_many(self, arrays: Mapping[str, np.ndarray]) -> None:
        """:meth:`update` for every tensor of a batch, on 2 threads; all-or-nothing on error."""
        tasks, sizes, owners = [], [], []
        for name, x in arrays.items():
            for part in split_parts(np.asarray(x)):
                tasks.append(partial(tensor_stats, part, name=name))
                sizes.append(int(part.size))
                owners.append(name)
        results = run_tasks(tasks, sizes)
        for name, st in zip(owners, results):
            self._stats[name] = self._stats.get(name, TensorStats()).merge(st)

    def merge(self, other: AbsmaxTracker) -> AbsmaxTracker:
        """Statistics over both trackers' data (e.g. pass 1 run on several machines)."""
        out = AbsmaxTracker(self)
        for src in (self, other):
            for name, st in src.items():
                out._stats[name] = out._stats[name].merge(st) if name in out._stats else st
        return out

    def absmax(self) -> dict[str, float]:
        """name -> finite absmax (0.0 for all-zero tensors and tensors without finite values)."""
        return {name: st.absmax for name, st in self._stats.items()}

    def histograms(self, num_bins: int) -> HistogramSet:
        """Empty pass-2 histograms with hist_max = this absmax, in tracker order."""
        return HistogramSet.from_absmax(self.absmax(), num_bins)
