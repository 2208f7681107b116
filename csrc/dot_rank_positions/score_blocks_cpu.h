#pragma once
// The CPU's walk over the scores rows @ cols.T without the [B, N] matrix,
// shared by dot_rank_positions and dot_top_columns: parallel over blocks of
// rows, each block's scores computed into a per-thread buffer by one matrix
// product and handed over a row at a time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>

namespace rankdistill {
namespace cpu {

// Scores per block: 1 MiB of float32, which stays in a core's L2 cache while
// its rows are visited; at least `min_block_rows` rows, for the matrix
// product's sake (its reads of cols are shared by a block's rows).
constexpr int64_t kBlockScores = int64_t{1} << 18;

// For every row r of rows @ cols.T (rows [B, d], cols [N, d], contiguous,
// of dtype scalar_t): visit(state, scores of row r (N contiguous), r), where
// state = make_state() is each thread's own (buffers reused across its rows).
template <typename scalar_t, typename MakeState, typename Visit>
void for_each_score_row(const at::Tensor& rows, const at::Tensor& cols, int64_t min_block_rows,
                        const MakeState& make_state, const Visit& visit) {
  const int64_t num_rows = rows.size(0), num_cols = cols.size(0);
  if (num_rows == 0) return;
  const at::Tensor cols_t = cols.t();
  const int64_t block_rows =
      std::min(num_rows, std::max(min_block_rows, kBlockScores / std::max<int64_t>(num_cols, 1)));
  const int64_t num_blocks = (num_rows + block_rows - 1) / block_rows;
  at::parallel_for(0, num_blocks, 1, [&](int64_t first_block, int64_t end_block) {
    auto state = make_state();
    at::Tensor buffer = at::empty({block_rows, num_cols}, rows.options());
    for (int64_t block = first_block; block < end_block; ++block) {
      const int64_t start = block * block_rows, count = std::min(block_rows, num_rows - start);
      at::Tensor scores = buffer.narrow(0, 0, count);
      // Inside parallel_for, ATen runs the product on this thread alone.
      at::mm_out(scores, rows.narrow(0, start, count), cols_t);
      const scalar_t* score_data = scores.const_data_ptr<scalar_t>();
      for (int64_t r = 0; r < count; ++r) visit(state, score_data + r * num_cols, start + r);
    }
  });
}

}  // namespace cpu
}  // namespace rankdistill
