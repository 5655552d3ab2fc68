"""CUDA source of the GPU |x| histogram and statistics kernels, as text.

Kept as a plain string (no pycuda import here) so the source can be reviewed, compiled by
``nvcc`` in a test where it exists, and handed to ``pycuda.compiler.SourceModule`` by
:mod:`trtkld.trt._backend` (with ``no_extern_c=True``: the source declares its own linkage).

Binning rule (docs/architecture.md, shared with the CPU histogram)::

    R = absmax over the calibration set, B = num_bins, inv_width = float64(B) / float64(R)
    index(x) = min(int(float64(|x|) * inv_width), B - 1)
    NaN, +Inf, -Inf are never binned: counted separately by the stats kernel.

``trtkld_bin_index`` compares the double product with ``B - 1`` before converting it to an
integer. For ``v >= 0``, ``trunc(v) >= B - 1`` exactly when ``v >= B - 1`` (``B - 1`` is an
integer), so this is the same index as ``min((long long)v, B - 1)``, without the undefined
conversion of a product too large for ``long long`` (``|x|`` far above ``R``).
One IEEE double multiply and a truncation: the GPU result is bit-identical to numpy's.

Counts are per-block ``unsigned int`` in shared memory, flushed into global
``unsigned long long`` bins with one ``atomicAdd`` per non-empty bin and block; the host grid
is capped so that no block sees 2**32 values (see ``max_values_per_launch``).

Statistics buffer layout (``unsigned long long[STATS_LEN]``, zeroed before the first launch,
accumulated across launches):

====  ======================================================================================
 0    max of the float32 bit pattern of ``|x|`` over finite x  (non-negative floats order as
      their bit patterns, so an integer ``atomicMax`` is a float max)
 1    max of ``order_key(x)`` over finite x   -> the maximum (``order_key`` is monotonic)
 2    max of ``~order_key(x)`` over finite x  -> the minimum
 3    number of finite values
 4    number of NaN
 5    number of +Inf
 6    number of -Inf
====  ======================================================================================
"""
from __future__ import annotations

STATS_LEN = 8
STATS_ABSMAX_BITS, STATS_MAX_KEY, STATS_MIN_KEY_INV = 0, 1, 2
STATS_FINITE, STATS_NAN, STATS_POSINF, STATS_NEGINF = 3, 4, 5, 6

# Shared-memory bins are 4 bytes each; 12288 bins = 48 KiB, the default per-block limit.
MAX_SHARED_BINS = 12288
BLOCK_SIZE = 256
MAX_GRID = 4096

HISTOGRAM_KERNEL = "trtkld_abs_histogram"
HISTOGRAM_GLOBAL_KERNEL = "trtkld_abs_histogram_global"
STATS_KERNEL = "trtkld_abs_stats"

SOURCE = r"""
typedef unsigned long long trtkld_u64;

// Bin of a FINITE float x: min(int(double(|x|) * inv_width), num_bins - 1).
__host__ __device__ inline int trtkld_bin_index(float x, double inv_width, int num_bins)
{
    double v = (double)fabsf(x) * inv_width;
    if (v >= (double)(num_bins - 1)) {
        return num_bins - 1;
    }
    return (int)v;
}

// Monotonic map float -> unsigned int: a < b  <=>  key(a) < key(b) (finite values).
__host__ __device__ inline unsigned int trtkld_order_key(unsigned int bits)
{
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

extern "C" __global__ void trtkld_abs_histogram(const float* __restrict__ x, trtkld_u64 n,
                                                double inv_width, int num_bins,
                                                trtkld_u64* __restrict__ bins)
{
    extern __shared__ unsigned int s_bins[];
    for (int b = threadIdx.x; b < num_bins; b += blockDim.x) {
        s_bins[b] = 0u;
    }
    __syncthreads();
    const trtkld_u64 stride = (trtkld_u64)blockDim.x * gridDim.x;
    for (trtkld_u64 i = (trtkld_u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = x[i];
        if (isfinite(v)) {
            atomicAdd(&s_bins[trtkld_bin_index(v, inv_width, num_bins)], 1u);
        }
    }
    __syncthreads();
    for (int b = threadIdx.x; b < num_bins; b += blockDim.x) {
        const unsigned int c = s_bins[b];
        if (c != 0u) {
            atomicAdd(&bins[b], (trtkld_u64)c);
        }
    }
}

// Same rule, straight to global memory: for bin counts that do not fit in shared memory.
extern "C" __global__ void trtkld_abs_histogram_global(const float* __restrict__ x, trtkld_u64 n,
                                                       double inv_width, int num_bins,
                                                       trtkld_u64* __restrict__ bins)
{
    const trtkld_u64 stride = (trtkld_u64)blockDim.x * gridDim.x;
    for (trtkld_u64 i = (trtkld_u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = x[i];
        if (isfinite(v)) {
            atomicAdd(&bins[trtkld_bin_index(v, inv_width, num_bins)], (trtkld_u64)1);
        }
    }
}

__device__ inline trtkld_u64 trtkld_warp_max(trtkld_u64 v)
{
    for (int offset = 16; offset > 0; offset >>= 1) {
        trtkld_u64 o = __shfl_down_sync(0xffffffffu, v, offset);
        v = o > v ? o : v;
    }
    return v;
}

__device__ inline trtkld_u64 trtkld_warp_sum(trtkld_u64 v)
{
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Block size must be a multiple of 32: every lane reaches the shuffles.
extern "C" __global__ void trtkld_abs_stats(const float* __restrict__ x, trtkld_u64 n,
                                            trtkld_u64* __restrict__ stats)
{
    trtkld_u64 absmax_bits = 0, max_key = 0, min_key_inv = 0;
    trtkld_u64 n_finite = 0, n_nan = 0, n_posinf = 0, n_neginf = 0;
    const trtkld_u64 stride = (trtkld_u64)blockDim.x * gridDim.x;
    for (trtkld_u64 i = (trtkld_u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = x[i];
        if (isnan(v)) {
            ++n_nan;
        } else if (isinf(v)) {
            if (v > 0.0f) { ++n_posinf; } else { ++n_neginf; }
        } else {
            ++n_finite;
            const unsigned int bits = __float_as_uint(v);
            const trtkld_u64 a = (trtkld_u64)(bits & 0x7fffffffu);
            const trtkld_u64 k = (trtkld_u64)trtkld_order_key(bits);
            const trtkld_u64 ki = (trtkld_u64)(~trtkld_order_key(bits));
            absmax_bits = a > absmax_bits ? a : absmax_bits;
            max_key = k > max_key ? k : max_key;
            min_key_inv = ki > min_key_inv ? ki : min_key_inv;
        }
    }
    absmax_bits = trtkld_warp_max(absmax_bits);
    max_key = trtkld_warp_max(max_key);
    min_key_inv = trtkld_warp_max(min_key_inv);
    n_finite = trtkld_warp_sum(n_finite);
    n_nan = trtkld_warp_sum(n_nan);
    n_posinf = trtkld_warp_sum(n_posinf);
    n_neginf = trtkld_warp_sum(n_neginf);
    if ((threadIdx.x & 31) == 0 && (n_finite | n_nan | n_posinf | n_neginf) != 0) {
        atomicMax(&stats[0], absmax_bits);
        atomicMax(&stats[1], max_key);
        atomicMax(&stats[2], min_key_inv);
        atomicAdd(&stats[3], n_finite);
        atomicAdd(&stats[4], n_nan);
        atomicAdd(&stats[5], n_posinf);
        atomicAdd(&stats[6], n_neginf);
    }
}
"""


def max_values_per_launch() -> int:
    """Largest element count one histogram launch may cover.

    A block's shared counters are ``unsigned int``; with ``MAX_GRID`` blocks of
    ``BLOCK_SIZE`` threads each block sees at most ``ceil(n / (MAX_GRID*BLOCK_SIZE))`` values
    per thread, so this bound keeps every block below 2**32 values.
    """
    return MAX_GRID * (2**32 - 1) // 2


def grid_size(n: int) -> int:
    """Blocks for ``n`` values: one value per thread up to ``MAX_GRID`` blocks, then strided."""
    return max(1, min(MAX_GRID, -(-n // BLOCK_SIZE)))


def decode_order_key(key: int) -> int:
    """float32 bit pattern of the value whose ``trtkld_order_key`` is ``key`` (inverse map)."""
    key &= 0xFFFFFFFF
    return (key & 0x7FFFFFFF) if key & 0x80000000 else (~key & 0xFFFFFFFF)
