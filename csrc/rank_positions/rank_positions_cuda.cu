// rank_positions on CUDA, by counting. A block owns a tile of up to kTile
// targets of one row: it sorts them in ranking order in shared memory, then
// its threads stride over the row's N scores, binary-search each among the
// tile's targets and count it (shared-memory atomics) at the first target it
// ranks before; the row's excluded columns are taken off the same way, and an
// inclusive prefix sum of the counts is each sorted target's rank. Nothing of
// size [B, N] is allocated; a row with T targets is read ceil(T / kTile) times.
// With no targets given, the targets are the N columns themselves. For very
// many targets (all columns of a large catalogue) that would be quadratic, so
// rows are ranked by a stable sort instead (rank_by_sort), in blocks of rows
// whose temporaries stay within kSortBudget elements.
#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/diff.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <climits>

#include "../common/bitonic_sort.cuh"
#include "rank_positions.h"

namespace rankdistill {
namespace {

constexpr int kTile = 1024;
constexpr int kThreads = 512;
constexpr int kCountsPerThread = kTile / kThreads;
// gridDim.y is limited to 65535: each block loops over rows.
constexpr int64_t kMaxRowBlocks = 65535;
// Beyond this many targets per row, sorting the row (a few passes over it)
// beats counting (one pass per tile of kTile targets). Not tuned on hardware.
constexpr int64_t kSortTargets = 8 * kTile;
// Elements of one row block of rank_by_sort: about 50 bytes of temporaries each.
constexpr int64_t kSortBudget = int64_t{1} << 24;

// A row of scores as floats, whatever the dtype and strides (as on the CPU).
template <typename scalar_t>
struct StridedRow {
  const scalar_t* data;
  int64_t stride;
  __device__ __forceinline__ float operator[](int64_t i) const {
    return canonical_zero(static_cast<float>(data[i * stride]));
  }
};

// targets: [B, T] contiguous, or nullptr for all columns (T = N).
// excluded_indptr/indices: CSR with each row's indices sorted, or nullptr.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    rank_positions_kernel(const scalar_t* scores, int64_t row_stride, int64_t col_stride, int64_t num_rows,
                          int64_t num_cols, const int64_t* targets, int64_t num_targets, int sort_size,
                          const int64_t* excluded_indptr, const int64_t* excluded_indices, int64_t* out,
                          int* saw_nan) {
  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ float target_scores[kTile];
  __shared__ int target_cols[kTile];
  __shared__ int target_slots[kTile];  // position within the tile, before sorting
  __shared__ int counts[kTile];
  __shared__ typename BlockScan::TempStorage scan_storage;

  const int64_t tile_start = static_cast<int64_t>(blockIdx.x) * kTile;
  const int n = static_cast<int>(std::min<int64_t>(kTile, num_targets - tile_start));
  for (int64_t row = blockIdx.y; row < num_rows; row += gridDim.y) {
    const StridedRow<scalar_t> row_scores{scores + row * row_stride, col_stride};
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
        [&](int a, int b) {
          const float score = target_scores[a];
          target_scores[a] = target_scores[b];
          target_scores[b] = score;
          const int col = target_cols[a];
          target_cols[a] = target_cols[b];
          target_cols[b] = col;
          const int slot = target_slots[a];
          target_slots[a] = target_slots[b];
          target_slots[b] = slot;
        });

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

// Ranks by a stable descending sort of each row (ties stay in column order,
// as ranks_before wants): a column's rank is its position in the sorted row
// less the excluded columns sorted before it. Rows go in blocks, so the
// temporaries are [block, N] however many rows there are; `targets`
// undefined means all columns (written straight into `out`).
void rank_by_sort(const at::Tensor& scores, const at::Tensor& targets, const std::optional<at::Tensor>& indptr_opt,
                  const std::optional<at::Tensor>& indices_opt, const at::Tensor& out) {
  const int64_t num_rows = scores.size(0), num_cols = scores.size(1);
  const bool excludes = indptr_opt.has_value() && indices_opt->numel() > 0;
  at::Tensor bounds, entry_rows;  // host copy of indptr; the row of every excluded entry
  if (excludes) {
    bounds = indptr_opt->to(at::kCPU).contiguous();
    const at::Tensor row_ids = at::arange(num_rows, indptr_opt->options());
    entry_rows = at::repeat_interleave(row_ids, at::diff(*indptr_opt), 0, indices_opt->numel());
  }
  const int64_t block = std::max<int64_t>(1, kSortBudget / std::max<int64_t>(num_cols, 1));
  const at::Tensor columns = at::arange(num_cols, out.options());
  for (int64_t first = 0; first < num_rows; first += block) {
    const int64_t rows = std::min(block, num_rows - first);
    // Compared as float32, as the counting kernel does; + 0.0 turns -0.0 into
    // +0.0, which the sort's bit-level keys would otherwise order apart.
    const at::Tensor keys = scores.narrow(0, first, rows).to(at::kFloat).add(0.0);
    TORCH_CHECK_VALUE(!at::isnan(keys).any().item<bool>(), "scores contain NaN: ranks are undefined for NaN scores");
    const at::Tensor order = std::get<1>(at::sort(keys, /*stable=*/true, /*dim=*/1, /*descending=*/true));
    at::Tensor position = columns.expand({rows, num_cols});
    if (excludes) {
      const int64_t* bound = bounds.const_data_ptr<int64_t>();
      const int64_t begin = bound[first], end = bound[first + rows];
      at::Tensor excluded = at::zeros({rows, num_cols}, out.options());
      // A repeated column writes 1 twice: excluded once.
      excluded.index_put_({entry_rows.slice(0, begin, end).sub(first), indices_opt->slice(0, begin, end)},
                          at::ones({}, out.options()));
      const at::Tensor excluded_in_order = excluded.gather(1, order);
      position = position.sub(excluded_in_order.cumsum(1).sub_(excluded_in_order));
    }
    if (!targets.defined()) {
      out.narrow(0, first, rows).scatter_(1, order, position);
    } else {
      const at::Tensor ranks = at::empty({rows, num_cols}, out.options()).scatter_(1, order, position);
      out.narrow(0, first, rows).copy_(ranks.gather(1, targets.narrow(0, first, rows)));
    }
  }
}

at::Tensor rank_positions_cuda(const at::Tensor& scores, const std::optional<at::Tensor>& targets_opt,
                               const std::optional<at::Tensor>& indptr_opt,
                               const std::optional<at::Tensor>& indices_opt) {
  const c10::cuda::CUDAGuard device_guard(scores.device());
  const RankCall call(scores, targets_opt, indptr_opt, indices_opt);
  if (call.nothing_to_rank()) return call.out;
  const int64_t num_rows = call.num_rows, num_cols = call.num_cols, num_targets = call.num_targets;
  const at::Tensor& targets = call.targets;
  const at::Tensor& out = call.out;
  if (num_targets > kSortTargets) {
    rank_by_sort(scores, targets, indptr_opt, indices_opt, out);
    return out;
  }

  // Each row's excluded indices sorted (one global sort of row * N + index),
  // so that the kernel can skip repeats by comparing with the previous entry.
  at::Tensor excluded_indptr, excluded_indices;
  if (indptr_opt.has_value() && indices_opt->numel() > 0) {
    excluded_indptr = indptr_opt->contiguous();
    const int64_t nnz = indices_opt->numel();
    const at::Tensor row_of_entry =
        at::repeat_interleave(at::diff(excluded_indptr), std::optional<int64_t>(nnz)).mul_(num_cols);
    excluded_indices = std::get<0>(at::sort(row_of_entry.add(*indices_opt))).sub_(row_of_entry);
  }

  at::Tensor saw_nan = at::zeros({}, scores.options().dtype(at::kInt));
  const dim3 grid(static_cast<unsigned int>((num_targets + kTile - 1) / kTile),
                  static_cast<unsigned int>(std::min(num_rows, kMaxRowBlocks)));
  int sort_size = 1;
  while (sort_size < std::min<int64_t>(num_targets, kTile)) sort_size <<= 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "rank_positions_cuda", [&] {
    rank_positions_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        scores.const_data_ptr<scalar_t>(), scores.stride(0), scores.stride(1), num_rows, num_cols,
        call.all_columns() ? nullptr : targets.const_data_ptr<int64_t>(), num_targets, sort_size,
        excluded_indptr.defined() ? excluded_indptr.const_data_ptr<int64_t>() : nullptr,
        excluded_indices.defined() ? excluded_indices.const_data_ptr<int64_t>() : nullptr,
        out.mutable_data_ptr<int64_t>(), saw_nan.mutable_data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  TORCH_CHECK_VALUE(saw_nan.item<int>() == 0, "scores contain NaN: ranks are undefined for NaN scores");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CUDA, m) { m.impl("rank_positions", &rank_positions_cuda); }

}  // namespace rankdistill
