"""Two-worker thread pool for filling several tensors at once.

The numba kernels release the GIL (``nogil=True``), so two Python threads keep both cores busy.
Work is described as a list of independent pure tasks; results come back in task order, so the
caller folds them in a fixed order and the outcome never depends on scheduling.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import numpy as np

T = TypeVar("T")

NUM_WORKERS = 2
# A tensor with at least this many elements is split in two halves so that a single large
# pending tensor still uses both cores.
SPLIT_MIN_ELEMENTS = 1 << 22
# Below this many elements in total, thread hand-off costs more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 16

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(NUM_WORKERS - 1, thread_name_prefix="trtkld-hist")
        return _executor


def split_parts(x: np.ndarray) -> list[np.ndarray]:
    """``x`` as one array, or as two halves of its flattened data when it is large."""
    if x.size < SPLIT_MIN_ELEMENTS:
        return [x]
    flat = x.ravel(order="K")
    half = flat.size // 2
    return [flat[:half], flat[half:]]


def run_tasks(tasks: Sequence[Callable[[], T]], sizes: Sequence[int]) -> list[T]:
    """Run ``tasks`` (biggest ``sizes`` first, on 2 threads when worthwhile); results in order.

    The calling thread and ``NUM_WORKERS - 1`` pool threads each take the next task from one
    shared queue until it is empty: one hand-off per worker per call, not one per task (a batch
    of a few hundred small tensors measured ~30 us of executor overhead per task otherwise).
    If any task raises, the exception of the first failing task in task order is raised after
    all tasks finished.
    """
    if len(tasks) < 2 or sum(sizes) < PARALLEL_MIN_ELEMENTS:
        return [t() for t in tasks]
    # Import (and compile or load) the numba kernels here, once, not racing in two workers.
    from trtkld.histogram import kernels  # noqa: F401

    # largest first: better balance; deque.popleft is atomic, so each task runs exactly once
    pending = deque(sorted(range(len(tasks)), key=lambda i: -sizes[i]))
    results: list = [None] * len(tasks)
    errors: list = [None] * len(tasks)

    def work() -> None:
        while True:
            try:
                i = pending.popleft()
            except IndexError:
                return
            try:
                results[i] = tasks[i]()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in task order
                errors[i] = exc

    pool = _get_executor()
    helpers = [pool.submit(work) for _ in range(NUM_WORKERS - 1)]
    work()
    for helper in helpers:
        helper.result()
    for error in errors:
        if error is not None:
            raise error
    return results
