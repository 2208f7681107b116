#pragma once
// A block-wide bitonic sort over shared memory, used by the CUDA kernels that
// order a row's few entries (targets to rank, sampling keys) in place.

namespace rankdistill {

// Sorts the n (a power of two) entries of a block's shared arrays so that
// before(a, b) holds for every earlier a and later b; swap(i, j) exchanges
// entries i and j. Every thread of the block must call it.
template <typename Before, typename Swap>
__device__ void bitonic_sort(int n, Before before, Swap swap) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
        const int i = 2 * t - (t & (stride - 1));  // i has bit `stride` clear; its partner is i + stride
        const int j = i + stride;
        const bool ascending = (i & size) == 0;
        if (before(j, i) == ascending) swap(i, j);
      }
      __syncthreads();
    }
  }
}

// Exchanges entries a and b of each of the parallel arrays given: the swap of
// a bitonic_sort over several arrays sorted together.
template <typename... Arrays>
__device__ __forceinline__ void swap_entries(int a, int b, Arrays*... arrays) {
  (
      [&] {
        const auto value = arrays[a];
        arrays[a] = arrays[b];
        arrays[b] = value;
      }(),
      ...);
}

__host__ __device__ __forceinline__ int next_pow2(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace rankdistill
