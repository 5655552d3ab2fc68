"""Speed of the fast threshold searches against the slow spec-literal reference loops.

Both run on the same seeded histograms (tests/helpers/reference_searches.py, default bin counts), in
the same process. Prints per method: fast ms per tensor, reference ms per tensor, and the
speed-up (reference / fast). A fast timing is each tensor's best of ``--repeat`` runs,
averaged over the tensors (robust to a busy machine); the references run once per tensor.

    /work/venv/bin/python bench/search.py [--count 6] [--repeat 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # repo root

from tests.helpers.reference_searches import (  # noqa: E402
    random_histograms,
    ref_modelopt,
    ref_mse,
    ref_nvidia,
    ref_percentile_index,
    ref_ppq,
)
from trtkld.search import DEFAULT_BINS, available_methods, run_search  # noqa: E402

REFERENCES = {
    "ppq": ref_ppq,
    "nvidia": ref_nvidia,
    "modelopt": ref_modelopt,
    "mse": ref_mse,
    "percentile": lambda counts: ref_percentile_index(counts, 99.99),
    "max": None,
    "auto": None,
}


def _time_fast(method: str, hists: list[tuple[np.ndarray, float]], repeat: int) -> float:
    total = 0.0
    for counts, r in hists:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            run_search(method, counts, hist_max=r)
            best = min(best, time.perf_counter() - start)
        total += best
    return total / len(hists) * 1e3


def _time_reference(method: str, hists: list[tuple[np.ndarray, float]]) -> float | None:
    ref = REFERENCES[method]
    if ref is None:
        return None
    start = time.perf_counter()
    for counts, _ in hists:
        ref(counts)
    return (time.perf_counter() - start) / len(hists) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6, help="histograms per method")
    parser.add_argument("--repeat", type=int, default=5, help="fast timing passes")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    print(f"{'method':<11}{'bins':>6}{'fast ms':>11}{'ref ms':>12}{'speed-up':>11}")
    for method in available_methods():
        bins = DEFAULT_BINS[method]
        hists = [(c, r) for _, c, r in random_histograms(args.count, bins, seed=args.seed)]
        for counts, r in hists:
            run_search(method, counts, hist_max=r)        # warm caches / imports
        fast = _time_fast(method, hists, args.repeat)
        ref = _time_reference(method, hists)
        ref_txt = f"{ref:12.2f}" if ref is not None else f"{'-':>12}"
        ratio = f"{ref / fast:10.0f}x" if ref is not None else f"{'-':>11}"
        print(f"{method:<11}{bins:>6}{fast:11.3f}{ref_txt}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
