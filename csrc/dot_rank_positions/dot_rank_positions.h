#pragma once
// What the CPU and CUDA kernels of dot_rank_positions share: the input checks.
// The op ranks targets as rank_positions(rows @ cols.T, targets, exclude)
// does, without the [B, N] score matrix: each backend computes the scores of
// a few rows at a time (CPU: a block of rows in a per-thread buffer; CUDA: a
// dot product per score as the ranking kernel reads it) and ranks them with
// rank_positions' own row ranking, so the two ops agree wherever the scores
// do (every score, target scores included, comes from one computation).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <optional>

#include "../rank_positions/rank_positions.h"

namespace rankdistill {

// The embeddings of the ops that score rows @ cols.T themselves
// (dot_rank_positions, dot_top_columns).
inline void check_dot_embeddings(const at::Tensor& row_embeddings, const at::Tensor& col_embeddings) {
  check_dim(row_embeddings, 2, "row_embeddings");
  check_dim(col_embeddings, 2, "col_embeddings");
  const auto dtype = row_embeddings.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble,
                   "row_embeddings must be float32 or float64 (cast half types to float32), got ", dtype);
  TORCH_CHECK_TYPE(col_embeddings.scalar_type() == dtype, "col_embeddings must have the dtype of row_embeddings (",
                   dtype, "), got ", col_embeddings.scalar_type());
  check_same_device(col_embeddings, row_embeddings, "col_embeddings", "row_embeddings");
  TORCH_CHECK_VALUE(col_embeddings.size(1) == row_embeddings.size(1),
                    "row_embeddings and col_embeddings must have the same dimension, got ", row_embeddings.size(1),
                    " and ", col_embeddings.size(1));
  TORCH_CHECK_VALUE(col_embeddings.size(0) < (int64_t{1} << 31), "col_embeddings may have at most 2^31 - 1 rows, got ",
                    col_embeddings.size(0));
}

struct DotRankCall {
  int64_t num_rows, num_cols, num_targets, dim;
  at::Tensor rows, cols, targets, out;

  DotRankCall(const at::Tensor& row_embeddings, const at::Tensor& col_embeddings, const at::Tensor& targets_in,
              const std::optional<at::Tensor>& indptr, const std::optional<at::Tensor>& indices) {
    check_dot_embeddings(row_embeddings, col_embeddings);
    num_rows = row_embeddings.size(0);
    num_cols = col_embeddings.size(0);
    dim = row_embeddings.size(1);
    check_targets_and_exclude(row_embeddings, "row_embeddings", num_rows, num_cols, "number of columns",
                              targets_in, indptr, indices);
    rows = row_embeddings.contiguous();
    cols = col_embeddings.contiguous();
    targets = targets_in.contiguous();
    num_targets = targets.size(1);
    out = at::empty({num_rows, num_targets}, row_embeddings.options().dtype(at::kLong));
  }
  // Nothing is ranked, so no score is computed (nor checked for NaN).
  bool nothing_to_rank() const { return num_rows == 0 || num_targets == 0; }
};

}  // namespace rankdistill
