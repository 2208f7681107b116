#pragma once
// What the CPU and CUDA kernels of dot_top_columns share: the checked call.
// The op gives each row's k best columns of rows @ cols.T, best first (score
// descending, ties by column ascending: rank_positions' order), the excluded
// columns left out and -1 padding where fewer than k remain, without the
// [B, N] score matrix: each backend scores a block of rows at a time and
// selects from it.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <optional>

#include "../dot_rank_positions/dot_rank_positions.h"

namespace rankdistill {

struct DotTopCall {
  int64_t num_rows, num_cols, k;
  at::Tensor rows, cols, out;

  DotTopCall(const at::Tensor& row_embeddings, const at::Tensor& col_embeddings, int64_t k_in,
             const std::optional<at::Tensor>& indptr, const std::optional<at::Tensor>& indices) {
    check_dot_embeddings(row_embeddings, col_embeddings);
    TORCH_CHECK_VALUE(k_in >= 0, "k must be non-negative, got ", k_in);
    num_rows = row_embeddings.size(0);
    num_cols = col_embeddings.size(0);
    k = k_in;
    check_targets_and_exclude(row_embeddings, "row_embeddings", num_rows, num_cols, "number of columns",
                              std::nullopt, indptr, indices);
    rows = row_embeddings.contiguous();
    cols = col_embeddings.contiguous();
    out = at::empty({num_rows, k}, row_embeddings.options().dtype(at::kLong));
  }
  // Nothing is selected, so no score is computed (nor checked for NaN).
  bool nothing_to_select() const { return num_rows == 0 || k == 0; }
};

}  // namespace rankdistill
