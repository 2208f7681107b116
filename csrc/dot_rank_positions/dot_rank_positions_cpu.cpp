// dot_rank_positions on the CPU: parallel over blocks of rows; each block's
// scores (rows @ cols.T) are computed into a per-thread buffer by one matrix
// product and its rows ranked from there by cpu::RowRanker, as
// rank_positions ranks the rows of a score matrix. The buffer holds at most
// kBlockScores scores: the [B, N] matrix is never built.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "../rank_positions/row_ranker_cpu.h"
#include "dot_rank_positions.h"

namespace rankdistill {
namespace {

// Scores per block: 1 MiB of float32, which stays in a core's L2 cache while
// its rows are ranked. At least kMinBlockRows rows, for the matrix product's sake.
constexpr int64_t kBlockScores = int64_t{1} << 18;
constexpr int64_t kMinBlockRows = 4;

at::Tensor dot_rank_positions_cpu(const at::Tensor& row_embeddings, const at::Tensor& col_embeddings,
                                  const at::Tensor& targets_in, const std::optional<at::Tensor>& indptr_opt,
                                  const std::optional<at::Tensor>& indices_opt) {
  const DotRankCall call(row_embeddings, col_embeddings, targets_in, indptr_opt, indices_opt);
  if (call.nothing_to_rank()) return call.out;
  const int64_t num_rows = call.num_rows, num_cols = call.num_cols, num_targets = call.num_targets;
  const at::Tensor cols_t = call.cols.t();
  const at::Tensor indptr = indptr_opt.has_value() ? indptr_opt->contiguous() : at::Tensor();
  const at::Tensor indices = indices_opt.has_value() ? indices_opt->contiguous() : at::Tensor();
  const int64_t block_rows =
      std::min(num_rows, std::max(kMinBlockRows, kBlockScores / std::max<int64_t>(num_cols, 1)));
  const int64_t num_blocks = (num_rows + block_rows - 1) / block_rows;
  const bool use_sort = cpu::use_sorting(false, num_targets, num_cols);
  std::atomic<bool> saw_nan{false};

  AT_DISPATCH_FLOATING_TYPES(call.rows.scalar_type(), "dot_rank_positions_cpu", [&] {
    const int64_t* target_data = call.targets.const_data_ptr<int64_t>();
    int64_t* out_data = call.out.mutable_data_ptr<int64_t>();
    at::parallel_for(0, num_blocks, 1, [&](int64_t first_block, int64_t end_block) {
      cpu::RowRanker<scalar_t> ranker{num_cols,
                                      indptr.defined() ? indptr.const_data_ptr<int64_t>() : nullptr,
                                      indices.defined() ? indices.const_data_ptr<int64_t>() : nullptr,
                                      &saw_nan, use_sort};
      at::Tensor buffer = at::empty({block_rows, num_cols}, call.rows.options());
      for (int64_t block = first_block; block < end_block; ++block) {
        const int64_t start = block * block_rows, rows = std::min(block_rows, num_rows - start);
        at::Tensor scores = buffer.narrow(0, 0, rows);
        // Inside parallel_for, ATen runs the product on this thread alone.
        at::mm_out(scores, call.rows.narrow(0, start, rows), cols_t);
        const scalar_t* score_data = scores.const_data_ptr<scalar_t>();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = start + r;
          ranker.rank({score_data + r * num_cols, 1}, row, target_data + row * num_targets, num_targets,
                      out_data + row * num_targets);
        }
      }
    });
  });
  TORCH_CHECK_VALUE(!saw_nan.load(),
                    "the scores (dot products of the embeddings) contain NaN: ranks are undefined for NaN scores");
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CPU, m) { m.impl("dot_rank_positions", &dot_rank_positions_cpu); }

}  // namespace rankdistill
