"""HistogramSet: the ordered histograms of every calibrated tensor of a model."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial

import numpy as np

from trtkld.errors import HistogramError
from trtkld.histogram._pool import run_tasks, split_parts
from trtkld.histogram.tensor import TensorHistogram, check_bins


class HistogramSet(Mapping[str, TensorHistogram]):
    """Ordered mapping tensor name -> :class:`TensorHistogram` (model tensor order).

    Pass 2 of calibration: build it from pass-1 absmax values (:meth:`from_absmax`), then call
    :meth:`update_many` once per batch with the collector's outputs.
    """

    def __init__(self, histograms: Iterable[TensorHistogram] = ()) -> None:
        self._hists: dict[str, TensorHistogram] = {}
        for h in histograms:
            self.add(h)

    @classmethod
    def from_absmax(cls, absmax: Mapping[str, object], num_bins: int) -> HistogramSet:
        """Empty histograms with hist_max = pass-1 absmax, in ``absmax``'s order.

        absmax: name -> float, or name -> TensorStats (e.g. an :class:`AbsmaxTracker`).
        """
        num_bins = check_bins(num_bins, "HistogramSet.from_absmax")
        hists = []
        for name, value in absmax.items():
            r = getattr(value, "absmax", value)
            hists.append(TensorHistogram(name, num_bins, r))
        return cls(hists)

    @classmethod
    def from_given_ranges(cls, names: Sequence[str], hist_max: Mapping[str, float],
                          num_bins: int) -> HistogramSet:
        """Empty histograms of ``names`` (model order) on user-given ranges (``--ranges-from``).

        Raises HistogramError naming the tensors ``hist_max`` lacks: ranges from another model
        or tensor selection cannot be merged exactly.
        """
        missing = [n for n in names if n not in hist_max]
        if missing:
            raise HistogramError(
                f"the given ranges lack {len(missing)} tensor(s) of the model, e.g. "
                f"{missing[:3]}; collect them from the same model and tensor selection"
            )
        return cls.from_absmax({n: float(hist_max[n]) for n in names}, num_bins)

    # ---- Mapping
    def __getitem__(self, name: str) -> TensorHistogram:
        try:
            return self._hists[name]
        except KeyError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._hists)

    def __len__(self) -> int:
        return len(self._hists)

    def __repr__(self) -> str:
        return f"HistogramSet({len(self)} tensors)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HistogramSet):
            return NotImplemented
        return list(self._hists) == list(other._hists) and all(
            self._hists[k] == other._hists[k] for k in self._hists
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    @property
    def names(self) -> list[str]:
        return list(self._hists)

    def add(self, hist: TensorHistogram) -> None:
        """Append ``hist``; its name must be new."""
        if not isinstance(hist, TensorHistogram):
            raise HistogramError(f"HistogramSet holds TensorHistogram, found {type(hist).__name__}")
        if hist.name in self._hists:
            raise HistogramError(f"tensor {hist.name!r} already has a histogram in this set")
        self._hists[hist.name] = hist

    # ---- filling
    def _get(self, name: str) -> TensorHistogram:
        if name not in self._hists:
            raise HistogramError(
                f"tensor {name!r} has no histogram in this set ({len(self)} tensors)"
            )
        return self._hists[name]

    def update(self, name: str, x: np.ndarray) -> None:
        """Add the values of one tensor (any shape, float16/32/64)."""
        self._get(name).update(x)

    def update_many(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Add one batch of every given tensor, on 2 threads (numba kernels release the GIL).

        arrays: name -> activation array (any shape, float16/32/64); names must be in the set.
        Either every histogram is updated or, on error, none is. Results are identical to
        calling :meth:`update` tensor by tensor (integer counts, min/max).
        """
        targets = [(self._get(name), np.asarray(x)) for name, x in arrays.items()]
        tasks, sizes, owners = [], [], []
        for hist, x in targets:
            for part in split_parts(x):
                tasks.append(partial(hist.scan, part))
                sizes.append(int(part.size))
                owners.append(hist)
        results = run_tasks(tasks, sizes)
        for hist, raw in zip(owners, results):
            hist.add_scan(raw)

    # ---- combining
    def merge(self, other: HistogramSet) -> HistogramSet:
        """Sum of two runs' histograms (e.g. two machines' pass 2 with the same pass-1 absmax).

        Both sets must hold the same tensors; each pair must have equal bins and hist_max.
        """
        if not isinstance(other, HistogramSet):
            raise HistogramError(f"cannot merge a HistogramSet with {type(other).__name__}")
        mine, theirs = set(self._hists), set(other._hists)
        if mine != theirs:
            only_a = sorted(mine - theirs)[:5]
            only_b = sorted(theirs - mine)[:5]
            raise HistogramError(
                "cannot merge histogram sets of different tensors: "
                f"only in first {only_a}, only in second {only_b}"
            )
        return HistogramSet(self._hists[k].merge(other._hists[k]) for k in self._hists)

    def rebin(self, num_bins: int) -> HistogramSet:
        """Every histogram rebinned exactly to ``num_bins`` (power-of-two factor)."""
        return HistogramSet(h.rebin(num_bins) for h in self._hists.values())

    # ---- files
    def save(self, path: str | os.PathLike) -> None:
        """Write a .npz file atomically (temp file + os.replace); see ``storage.py``."""
        from trtkld.histogram.storage import save_histograms

        save_histograms(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HistogramSet:
        """Read a file written by :meth:`save`; HistogramError naming the file if invalid."""
        from trtkld.histogram.storage import load_histograms

        return cls(load_histograms(path))
