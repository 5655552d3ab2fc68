"""Slow reference searches, written line by line from docs/kld-spec.md with plain loops.

They are the oracles the fast numpy searches in ``trtkld.search`` are tested against (and the
baseline ``bench/search.py`` measures speed-ups against). Each returns ``(index, objective
per candidate as a list, candidates as a list)``; the caller turns the index into amax/scale.
Nothing here is shared with the fast code.
"""
from __future__ import annotations

import math

import numpy as np

QB = 128


# ---------------------------------------------------------------- ppq
def _f32_sum(values) -> np.float32:
    """float32 sum, correctly rounded from the exact sum (order-independent)."""
    return np.float32(math.fsum(float(v) for v in values))


def ref_ppq(counts) -> tuple[int, list[float], list[int]]:
    """PPQ ``hist_to_scale_offset``: returns (best r, KL per r, r values)."""
    b = len(counts)
    hist = [np.float32(c) for c in counts]          # PPQ keeps the histogram in float32
    cut = int(b * 0.002)
    for j in range(cut):
        hist[j] = np.float32(0)
    hist[cut] = np.float32(1)
    total = _f32_sum(hist)
    losses, rs = [], []
    for r in range(QB, b + QB - 1, QB):
        # P: first r bins, the rest folded into the last one, divided by total (float32).
        p = list(hist[:r])
        p[r - 1] = p[r - 1] + _f32_sum(hist[r:])
        p = [x / total for x in p]
        # Q: r bins as 128 groups of r/128; a group's sum spread over its nonzero bins.
        width = r // QB
        q = []
        for g in range(QB):
            group = hist[g * width:(g + 1) * width]
            nonzero = sum(1 for x in group if x > 0)
            if nonzero == 0:
                nonzero = 1
            value = _f32_sum(group) / np.float32(nonzero)
            for x in group:
                q.append(value if x > 0 else np.float32(0))
        q_total = _f32_sum(q)
        if q_total == 0:                           # every kept bin empty: 0/0 in PPQ
            losses.append(math.inf)
            rs.append(r)
            continue
        q = [x / q_total for x in q]
        kl = 0.0
        for pj, qj in zip(p, q):
            pd, qd = float(pj), float(qj)
            kl += pd * (math.log10(pd + 1e-30) - math.log10(qd + 1e-30))
        losses.append(kl)
        rs.append(r)
    best = 0
    for k in range(1, len(losses)):
        if losses[k] < losses[best]:               # strict: ties keep the smaller r
            best = k
    return rs[best], losses, rs


# ---------------------------------------------------------------- nvidia / modelopt
def ref_p_q(h: list[int], i: int) -> tuple[list[float], list[float]]:
    """Unnormalised P and Q for keeping bins 0..i-1 (GTC 2017 / ModelOpt rules)."""
    p = [float(x) for x in h[:i]]
    p[i - 1] += float(sum(h[i:]))
    level = (np.digitize(np.arange(i), np.linspace(0, i, QB + 1)) - 1).tolist()
    level_sum = [0.0] * QB
    level_nonzero = [0] * QB
    for j in range(i):
        if h[j] > 0:
            level_sum[level[j]] += h[j]
            level_nonzero[level[j]] += 1
    q = [0.0] * i
    for j in range(i):
        if h[j] > 0:
            q[j] = level_sum[level[j]] / level_nonzero[level[j]]
    return p, q


def ref_kl_candidate(h: list[int], i: int) -> float:
    """Natural-log KL(P||Q) after normalising both; inf where P > 0 and Q == 0."""
    p, q = ref_p_q(h, i)
    p_total, q_total = sum(p), sum(q)
    if q_total == 0:
        return math.inf                            # Q without mass: infinite, never NaN
    kl = 0.0
    for pj, qj in zip(p, q):
        pj, qj = pj / p_total, qj / q_total
        if pj > 0:
            if qj == 0:
                return math.inf
            kl += pj * math.log(pj / qj)
    return kl


def ref_nvidia(counts) -> tuple[int, list[float], list[int]]:
    """GTC 2017: i in 128..B-1, FIRST minimum; threshold (m + 0.5) * w."""
    h = [int(x) for x in counts]
    cands = list(range(QB, len(h)))
    kls = [ref_kl_candidate(h, i) for i in cands]
    best = 0
    for k in range(1, len(kls)):
        if kls[k] < kls[best]:
            best = k
    return cands[best], kls, cands


def ref_modelopt(counts) -> tuple[int, list[float], list[int]]:
    """ModelOpt: h[0] = h[1]; i in 128..B, LAST minimum; amax = i * w."""
    h = [int(x) for x in counts]
    h[0] = h[1]
    cands = list(range(QB, len(h) + 1))
    kls = [ref_kl_candidate(h, i) for i in cands]
    best = 0
    for k in range(1, len(kls)):
        if kls[k] <= kls[best]:
            best = k
    return cands[best], kls, cands


# ---------------------------------------------------------------- mse
def ref_mse_error(h: list[int], i: int) -> int:
    """Exact squared INT8 error of the histogram for amax = i * w, in units of (w / 254)**2.

    Bin centre c_j = (2j + 1) / 2 * w; scale s = amax / 127 = i / 127 * w. So
    c_j - k * s = (127 * (2j + 1) - 2 * k * i) / 254 * w: integers all the way.
    """
    err = 0
    for j, count in enumerate(h):
        if count == 0:
            continue
        centre = 127 * (2 * j + 1)                 # c_j in units of w / 254
        amax = 254 * i
        if centre > amax:
            diff = centre - amax                   # clipped to amax
        else:
            step = 2 * i                            # s in units of w / 254
            k = (2 * centre + step) // (2 * step)   # nearest level (ties do not change error)
            diff = centre - k * step
        err += count * diff * diff
    return err


def ref_mse(counts) -> tuple[int, list[int], list[int]]:
    """mse: amax candidates i * w for i in 1..B; FIRST minimum of the exact squared error."""
    h = [int(x) for x in counts]
    cands = list(range(1, len(h) + 1))
    errs = [ref_mse_error(h, i) for i in cands]
    best = 0
    for k in range(1, len(errs)):
        if errs[k] < errs[best]:
            best = k
    return cands[best], errs, cands


# ---------------------------------------------------------------- percentile / sqnr
def ref_percentile_index(counts, percentile: float) -> int:
    """Smallest k with cumulative count through bin k >= percentile/100 * total; returns k+1."""
    total = sum(int(x) for x in counts)
    target = percentile / 100.0 * total
    running = 0
    for k, x in enumerate(counts):
        running += int(x)
        if running >= target:
            return k + 1
    return len(counts)


def ref_sqnr_db(counts, bin_width: float, amax: float, scale: float) -> float:
    """10 log10(signal / noise) with bin centres as values, INT8 levels 0..127 for |x|."""
    signal, noise = 0.0, 0.0
    for j, x in enumerate(counts):
        if x == 0:
            continue
        c = (j + 0.5) * bin_width
        level = min(round(min(c, amax) / scale), 127)   # round half to even, like rint
        signal += int(x) * c * c
        noise += int(x) * (c - level * scale) ** 2
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(signal / noise)


# ---------------------------------------------------------------- seeded test histograms
FAMILIES = ("half-normal", "laplace", "relu-spike", "heavy-tail", "sparse")


def bin_abs(x: np.ndarray, num_bins: int) -> tuple[np.ndarray, float]:
    """|x| histogram by the project's binning rule; returns (int64 counts, R)."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    r = float(ax.max())
    if r == 0.0:
        return np.zeros(num_bins, dtype=np.int64), 0.0
    idx = np.minimum((ax * (float(num_bins) / r)).astype(np.int64), num_bins - 1)
    return np.bincount(idx, minlength=num_bins).astype(np.int64), r


def random_histogram(rng: np.random.Generator, family: str, num_bins: int
                     ) -> tuple[np.ndarray, float]:
    """One histogram of the given family: (int64 counts (num_bins,), R)."""
    n = int(rng.integers(20, 40_000))
    if family == "half-normal":
        x = rng.normal(0.0, rng.uniform(0.01, 10.0), n)
    elif family == "laplace":
        x = rng.laplace(0.0, rng.uniform(0.01, 10.0), n)
    elif family == "relu-spike":
        x = np.maximum(rng.normal(rng.uniform(-1.0, 0.5), 1.0, n), 0.0)
        if not x.any():
            x[0] = 1.0
    elif family == "heavy-tail":
        x = rng.standard_t(rng.uniform(1.2, 4.0), n)
        k = int(rng.integers(1, 6))
        x[:k] *= rng.uniform(20.0, 200.0, k)          # a few far outliers
    elif family == "sparse":
        k = int(rng.integers(1, 40))                   # a handful of distinct values
        values = rng.uniform(0.0, 5.0, k)
        x = values[rng.integers(0, k, n)]
    else:
        raise ValueError(family)
    counts, r = bin_abs(x, num_bins)
    if rng.random() < 0.15:                            # huge counts: > 2**24 per bin
        counts = counts * int(rng.integers(2**20, 2**26))
    return counts, r


def random_histograms(count: int, num_bins: int, seed: int):
    """``count`` seeded histograms cycling through FAMILIES: yields (family, counts, R)."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        family = FAMILIES[k % len(FAMILIES)]
        counts, r = random_histogram(rng, family, num_bins)
        yield family, counts, r
