// dot_rank_positions on the CPU: parallel over blocks of rows; each block's
// scores (rows @ cols.T) are computed into a per-thread buffer by one matrix
// product and its rows ranked from there by cpu::RowRanker, as
// rank_positions ranks the rows of a score matrix. The buffer holds at most
// kBlockScores scores: the [B, N] matrix is never built.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "../rank_positions/row_ranker_cpu.h"
#include "dot_rank_positions.h"
#include "score_blocks_cpu.h"

namespace rankdistill {
namespace {

// At least 4 rows per block (each row's ranking costs far more than its share of the product).
constexpr int64_t kMinBlockRows = 4;

at::Tensor dot_rank_positions_cpu(const at::Tensor& row_embeddings, const at::Tensor& col_embeddings,
                                  const at::Tensor& targets_in, const std::optional<at::Tensor>& indptr_opt,
                                  const std::optional<at::Tensor>& indices_opt) {
  const DotRankCall call(row_embeddings, col_embeddings, targets_in, indptr_opt, indices_opt);
  if (call.nothing_to_rank()) return call.out;
  const int64_t num_cols = call.num_cols, num_targets = call.num_targets;
  const at::Tensor indptr = indptr_opt.has_value() ? indptr_opt->contiguous() : at::Tensor();
  const at::Tensor indices = indices_opt.has_value() ? indices_opt->contiguous() : at::Tensor();
  const bool use_sort = cpu::use_sorting(false, num_targets, num_cols);
  std::atomic<bool> saw_nan{false};

  AT_DISPATCH_FLOATING_TYPES(call.rows.scalar_type(), "dot_rank_positions_cpu", [&] {
    const int64_t* target_data = call.targets.const_data_ptr<int64_t>();
    int64_t* out_data = call.out.mutable_data_ptr<int64_t>();
    cpu::for_each_score_row<scalar_t>(
        call.rows, call.cols, kMinBlockRows,
        [&] {
          return cpu::RowRanker<scalar_t>{num_cols, indptr.defined() ? indptr.const_data_ptr<int64_t>() : nullptr,
                                          indices.defined() ? indices.const_data_ptr<int64_t>() : nullptr,
                                          &saw_nan, use_sort};
        },
        [&](cpu::RowRanker<scalar_t>& ranker, const scalar_t* scores, int64_t row) {
          ranker.rank({scores, 1}, row, target_data + row * num_targets, num_targets, out_data + row * num_targets);
        });
  });
  TORCH_CHECK_VALUE(!saw_nan.load(),
                    "the scores (dot products of the embeddings) contain NaN: ranks are undefined for NaN scores");
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CPU, m) { m.impl("dot_rank_positions", &dot_rank_positions_cpu); }

}  // namespace rankdistill
