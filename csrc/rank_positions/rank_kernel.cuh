#pragma once
// rank_positions' CUDA counting kernel, shared with dot_rank_positions. A
// block owns a tile of up to kTile targets of one row: it sorts them in
// ranking order in shared memory, then its threads stride over the row's N
// scores, binary-search each among the tile's targets and count it
// (shared-memory atomics) at the first target it ranks before; the row's
// excluded columns are taken off the same way, and an inclusive prefix sum of
// the counts is each sorted target's rank. Nothing of size [B, N] is
// allocated; a row with T targets is read ceil(T / kTile) times. The row
// source says where a row's scores come from: a score matrix
// (ScoreMatrixRows) or dot products computed as they are read.
#include <ATen/ops/diff.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <climits>
#include <optional>
#include <utility>

#include "../common/bitonic_sort.cuh"
#include "rank_positions.h"

namespace rankdistill {
namespace cuda {

constexpr int kTile = 1024;
constexpr int kThreads = 512;
constexpr int kCountsPerThread = kTile / kThreads;
// gridDim.y is limited to 65535: each block loops over rows.
constexpr int64_t kMaxRowBlocks = 65535;
// Beyond this many targets per row, sorting the row (a few passes over it)
// beats counting (one pass per tile of kTile targets). Not tuned on hardware.
constexpr int64_t kMaxCountTargets = 8 * kTile;

// A row of scores as floats, whatever the dtype and strides (as on the CPU).
template <typename scalar_t>
struct StridedRow {
  const scalar_t* data;
  int64_t stride;
  __device__ __forceinline__ float operator[](int64_t i) const {
    return canonical_zero(static_cast<float>(data[i * stride]));
  }
};

// The rows of a score matrix (rank_positions). A row source gives the
// kernel each row's scores: row(r, shared) is called by every thread of the
// block, and may use `shared` (shared_bytes() of dynamic shared memory).
template <typename scalar_t>
struct ScoreMatrixRows {
  const scalar_t* scores;
  int64_t row_stride, col_stride;
  static constexpr size_t shared_bytes() { return 0; }
  __device__ __forceinline__ StridedRow<scalar_t> row(int64_t r, unsigned char*) const {
    return {scores + r * row_stride, col_stride};
  }
};

// targets: [B, T] contiguous, or nullptr for all columns (T = N).
// excluded_indptr/indices: CSR with each row's indices sorted, or nullptr.
template <typename RowSource>
__global__ void __launch_bounds__(kThreads)
    rank_positions_kernel(RowSource source, int64_t num_rows, int64_t num_cols, const int64_t* targets,
                          int64_t num_targets, int sort_size, const int64_t* excluded_indptr,
                          const int64_t* excluded_indices, int64_t* out, int* saw_nan) {
  extern __shared__ __align__(16) unsigned char row_shared[];
  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ float target_scores[kTile];
  __shared__ int target_cols[kTile];
  __shared__ int target_slots[kTile];  // position within the tile, before sorting
  __shared__ int counts[kTile];
  __shared__ typename BlockScan::TempStorage scan_storage;

  const int64_t tile_start = static_cast<int64_t>(blockIdx.x) * kTile;
  const int n = static_cast<int>(std::min<int64_t>(kTile, num_targets - tile_start));
  for (int64_t row = blockIdx.y; row < num_rows; row += gridDim.y) {
    const auto row_scores = source.row(row, row_shared);
    // Padding (score -inf, column INT_MAX) sorts after every real target.
    for (int l = threadIdx.x; l < sort_size; l += blockDim.x) {
      if (l < n) {
        const int64_t col = targets != nullptr ? targets[row * num_targets + tile_start + l] : tile_start + l;
        target_scores[l] = row_scores[col];
        target_cols[l] = static_cast<int>(col);
      } else {
        target_scores[l] = -INFINITY;
        target_cols[l] = INT_MAX;
      }
      target_slots[l] = l;
    }
    for (int l = threadIdx.x; l < kTile; l += blockDim.x) counts[l] = 0;
    __syncthreads();
    bitonic_sort(
        sort_size,
        [&](int a, int b) { return ranks_before(target_scores[a], target_cols[a], target_scores[b], target_cols[b]); },
        [&](int a, int b) { swap_entries(a, b, target_scores, target_cols, target_slots); });

    const float lowest = target_scores[n - 1];
    // A score is placed among the tile's targets by comparisons alone, with
    // no position computed in float arithmetic (unlike the CPU's bucket
    // table), so any score, infinite or subnormal, gets a p in [0, n].
    // Many scores may rank before the whole tile: count those in a register
    // rather than contend on counts[0].
    int before_all = 0;
    bool nan = false;
    for (int64_t i = threadIdx.x; i < num_cols; i += blockDim.x) {
      const float s = row_scores[i];
      nan |= std::isnan(s);
      if (s < lowest) continue;  // below every target: counts for none
      const int p = first_target_after(target_scores, target_cols, n, s, i);
      if (p == 0) {
        ++before_all;
      } else if (p < n) {
        atomicAdd(&counts[p], 1);
      }
    }
    if (excluded_indptr != nullptr) {
      const int64_t begin = excluded_indptr[row], end = excluded_indptr[row + 1];
      for (int64_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
        const int64_t i = excluded_indices[e];
        if (e > begin && excluded_indices[e - 1] == i) continue;  // a repeated column is excluded once
        const float s = row_scores[i];
        if (s < lowest) continue;
        const int p = first_target_after(target_scores, target_cols, n, s, i);
        if (p == 0) {
          --before_all;
        } else if (p < n) {
          atomicSub(&counts[p], 1);
        }
      }
    }
    if (before_all != 0) atomicAdd(&counts[0], before_all);
    if (nan) *saw_nan = 1;
    __syncthreads();

    int ranks[kCountsPerThread];
    for (int j = 0; j < kCountsPerThread; ++j) ranks[j] = counts[threadIdx.x * kCountsPerThread + j];
    BlockScan(scan_storage).InclusiveSum(ranks, ranks);
    int64_t* row_out = out + row * num_targets + tile_start;
    for (int j = 0; j < kCountsPerThread; ++j) {
      const int position = threadIdx.x * kCountsPerThread + j;
      if (position < n) row_out[target_slots[position]] = ranks[j];
    }
    __syncthreads();  // the shared arrays are reused by the block's next row
  }
}

// Each row's excluded indices sorted (one global sort of row * N + index),
// so that the kernel can skip repeats by comparing with the previous entry.
// Undefined tensors when nothing is excluded.
inline std::pair<at::Tensor, at::Tensor> sorted_exclusions(const std::optional<at::Tensor>& indptr_opt,
                                                           const std::optional<at::Tensor>& indices_opt,
                                                           int64_t num_cols) {
  if (!indptr_opt.has_value() || indices_opt->numel() == 0) return {};
  at::Tensor indptr = indptr_opt->contiguous();
  const int64_t nnz = indices_opt->numel();
  const at::Tensor row_of_entry = at::repeat_interleave(at::diff(indptr), std::optional<int64_t>(nnz)).mul_(num_cols);
  return {indptr, std::get<0>(at::sort(row_of_entry.add(*indices_opt))).sub_(row_of_entry)};
}

// The counting kernel over `num_rows` rows of `source`, into out [B, T].
template <typename RowSource>
void launch_rank_kernel(const RowSource& source, int64_t num_rows, int64_t num_cols, const at::Tensor& targets,
                        int64_t num_targets, const std::optional<at::Tensor>& indptr_opt,
                        const std::optional<at::Tensor>& indices_opt, const at::Tensor& out,
                        const at::Tensor& saw_nan) {
  const auto [excluded_indptr, excluded_indices] = sorted_exclusions(indptr_opt, indices_opt, num_cols);
  const dim3 grid(static_cast<unsigned int>((num_targets + kTile - 1) / kTile),
                  static_cast<unsigned int>(std::min(num_rows, kMaxRowBlocks)));
  int sort_size = 1;
  while (sort_size < std::min<int64_t>(num_targets, kTile)) sort_size <<= 1;
  rank_positions_kernel<RowSource><<<grid, kThreads, source.shared_bytes(), c10::cuda::getCurrentCUDAStream()>>>(
      source, num_rows, num_cols, targets.defined() ? targets.const_data_ptr<int64_t>() : nullptr, num_targets,
      sort_size, excluded_indptr.defined() ? excluded_indptr.const_data_ptr<int64_t>() : nullptr,
      excluded_indices.defined() ? excluded_indices.const_data_ptr<int64_t>() : nullptr,
      out.mutable_data_ptr<int64_t>(), saw_nan.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace rankdistill
