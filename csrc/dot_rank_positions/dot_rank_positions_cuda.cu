// dot_rank_positions on CUDA: rank_positions' counting kernel
// (rank_kernel.cuh) with each score computed as the kernel reads it: the
// row's embedding in shared memory, the columns' embeddings transposed to
// [d, N] (the threads of a warp read consecutive columns, so consecutive
// addresses), summed over k in a fixed order with explicit fused
// multiply-adds, so that a score is the same number wherever it is computed
// (a target's own score included). Rows with more targets than the counting
// kernel takes (cuda::kMaxCountTargets), or embeddings too long for shared memory, are
// scored a block of rows at a time by a matrix product and ranked by
// rank_positions itself.
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../rank_positions/rank_kernel.cuh"
#include "dot_rank_positions.h"

namespace rankdistill {
namespace {

// The row's embedding in dynamic shared memory, beside the kernel's 16 KiB of
// static shared memory: within the 48 KiB every GPU grants without opt-in.
constexpr int64_t kMaxEmbeddingBytes = 16 * 1024;
// Scores per block of rows on the matrix-product path.
constexpr int64_t kBlockScores = int64_t{1} << 24;

__device__ __forceinline__ float multiply_add(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double multiply_add(double a, double b, double c) { return __fma_rn(a, b, c); }

template <typename scalar_t>
struct DotRow {
  const scalar_t* embedding;  // the row's, in shared memory
  const scalar_t* cols_t;     // [dim, num_cols]
  int64_t dim, num_cols;
  __device__ __forceinline__ float operator[](int64_t i) const {
    scalar_t score = 0;
    for (int64_t k = 0; k < dim; ++k) score = multiply_add(embedding[k], cols_t[k * num_cols + i], score);
    return canonical_zero(static_cast<float>(score));  // compared in float32, as rank_positions compares
  }
};

template <typename scalar_t>
struct DotProductRows {
  const scalar_t* rows;  // [num_rows, dim]
  const scalar_t* cols_t;
  int64_t dim, num_cols;
  size_t shared_bytes() const { return static_cast<size_t>(dim) * sizeof(scalar_t); }
  // Called by every thread of the block; the kernel's barrier at the end of
  // each row keeps the previous row's readers ahead of this write.
  __device__ __forceinline__ DotRow<scalar_t> row(int64_t r, unsigned char* shared) const {
    scalar_t* embedding = reinterpret_cast<scalar_t*>(shared);
    for (int64_t k = threadIdx.x; k < dim; k += blockDim.x) embedding[k] = rows[r * dim + k];
    __syncthreads();
    return {embedding, cols_t, dim, num_cols};
  }
};

using RankPositions = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&,
                                 const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);

// Blocks of rows scored by a matrix product, each ranked by rank_positions.
void rank_by_blocks(const DotRankCall& call, const std::optional<at::Tensor>& indptr_opt,
                    const std::optional<at::Tensor>& indices_opt) {
  static const auto rank_positions = c10::Dispatcher::singleton()
                                         .findSchemaOrThrow("rankdistill::rank_positions", "")
                                         .typed<RankPositions>();
  const at::Tensor bounds = indptr_opt.has_value() ? indptr_opt->to(at::kCPU).contiguous() : at::Tensor();
  const at::Tensor cols_t = call.cols.t();
  const int64_t block = std::max<int64_t>(1, kBlockScores / std::max<int64_t>(call.num_cols, 1));
  for (int64_t first = 0; first < call.num_rows; first += block) {
    const int64_t rows = std::min(block, call.num_rows - first);
    std::optional<at::Tensor> indptr, indices;
    if (bounds.defined()) {
      const int64_t begin = bounds.const_data_ptr<int64_t>()[first];
      const int64_t end = bounds.const_data_ptr<int64_t>()[first + rows];
      indptr = indptr_opt->narrow(0, first, rows + 1).sub(begin);
      indices = indices_opt->narrow(0, begin, end - begin);
    }
    const at::Tensor scores = at::mm(call.rows.narrow(0, first, rows), cols_t);
    call.out.narrow(0, first, rows).copy_(rank_positions.call(scores, call.targets.narrow(0, first, rows), indptr,
                                                              indices));
  }
}

at::Tensor dot_rank_positions_cuda(const at::Tensor& row_embeddings, const at::Tensor& col_embeddings,
                                   const at::Tensor& targets, const std::optional<at::Tensor>& indptr_opt,
                                   const std::optional<at::Tensor>& indices_opt) {
  const c10::cuda::CUDAGuard device_guard(row_embeddings.device());
  const DotRankCall call(row_embeddings, col_embeddings, targets, indptr_opt, indices_opt);
  if (call.nothing_to_rank()) return call.out;
  if (call.num_targets > cuda::kMaxCountTargets ||
      call.dim * static_cast<int64_t>(call.rows.element_size()) > kMaxEmbeddingBytes) {
    rank_by_blocks(call, indptr_opt, indices_opt);
    return call.out;
  }
  const at::Tensor cols_t = call.cols.t().contiguous();
  at::Tensor saw_nan = at::zeros({}, call.rows.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(call.rows.scalar_type(), "dot_rank_positions_cuda", [&] {
    const DotProductRows<scalar_t> source{call.rows.const_data_ptr<scalar_t>(), cols_t.const_data_ptr<scalar_t>(),
                                          call.dim, call.num_cols};
    cuda::launch_rank_kernel(source, call.num_rows, call.num_cols, call.targets, call.num_targets, indptr_opt,
                             indices_opt, call.out, saw_nan);
  });
  TORCH_CHECK_VALUE(saw_nan.item<int>() == 0,
                    "the scores (dot products of the embeddings) contain NaN: ranks are undefined for NaN scores");
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CUDA, m) { m.impl("dot_rank_positions", &dot_rank_positions_cuda); }

}  // namespace rankdistill
