"""Many searches at once: identical inputs searched once, the rest spread over threads.

Every search is a pure function of (method, counts, bin width, range, options), so two tensors
with byte-identical histograms (an ``Add`` output and the ``Resize``/``Identity`` that copies it,
say) get the same :class:`SearchResult` whether it is computed once or twice; the cache still
lists both tensors. Results come back in request order whatever the thread scheduling.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from trtkld.errors import SearchError
from trtkld.search.result import SearchResult

DEFAULT_WORKERS = 2
# Below this many distinct searches, thread hand-off costs more than it saves.
_PARALLEL_MIN = 4


@dataclass(frozen=True)
class SearchRequest:
    """One tensor's search: ``counts`` (B,) integer |x| counts over ``[0, hist_max]``."""

    name: str
    method: str
    counts: np.ndarray
    bin_width: float
    hist_max: float
    options: Mapping[str, object] = field(default_factory=dict)

    def key(self) -> tuple:
        """Everything the result depends on (the tensor name only labels errors)."""
        counts = np.ascontiguousarray(self.counts)
        digest = hashlib.blake2b(counts.view(np.uint8), digest_size=16).digest()
        options = tuple(sorted((k, repr(v)) for k, v in self.options.items()))
        return (self.method, float(self.bin_width), float(self.hist_max), options,
                counts.dtype.str, counts.size, digest)


def unique_requests(requests: Sequence[SearchRequest]) -> tuple[list[int], list[int]]:
    """Group byte-identical requests.

    Returns ``(firsts, owner)``: ``firsts`` the indices of the first request of each group,
    in request order; ``owner[i]`` the position in ``firsts`` of request ``i``'s group.
    Equal keys are confirmed element by element, so a hash collision cannot merge two groups.
    """
    groups: dict[tuple, list[int]] = {}
    firsts: list[int] = []
    owner: list[int] = []
    for i, request in enumerate(requests):
        candidates = groups.setdefault(request.key(), [])
        for slot in candidates:
            if np.array_equal(requests[firsts[slot]].counts, request.counts):
                owner.append(slot)
                break
        else:
            candidates.append(len(firsts))
            owner.append(len(firsts))
            firsts.append(i)
    return firsts, owner


def run_searches(
    requests: Sequence[SearchRequest], *, workers: Optional[int] = None
) -> list[SearchResult]:
    """Results of every request, in request order.

    Byte-identical requests are searched once and share the (immutable) result. Distinct ones
    run on ``workers`` threads (default 2; numpy releases the GIL inside its array loops). A
    :class:`SearchError` names the tensor; with several failures, the first in request order
    is raised.
    """
    from trtkld.search import run_search

    firsts, owner = unique_requests(requests)

    def search(i: int) -> SearchResult:
        r = requests[i]
        try:
            return run_search(r.method, r.counts, bin_width=r.bin_width, hist_max=r.hist_max,
                              **dict(r.options))
        except SearchError as exc:
            raise SearchError(f"tensor {r.name!r}: {exc}") from exc

    workers = DEFAULT_WORKERS if workers is None else max(1, int(workers))
    if workers == 1 or len(firsts) < _PARALLEL_MIN:
        distinct = [search(i) for i in firsts]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="trtkld-search") as pool:
            futures = [pool.submit(search, i) for i in firsts]
            errors = [f.exception() for f in futures]
        first_error = next((e for e in errors if e is not None), None)
        if first_error is not None:
            raise first_error
        distinct = [f.result() for f in futures]
    return [distinct[slot] for slot in owner]
