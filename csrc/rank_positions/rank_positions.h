#pragma once
// What the CPU and CUDA kernels of rank_positions share: the input checks and
// the ranking order.
#include <ATen/core/Tensor.h>
#include <ATen/ops/diff.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/lt.h>

#include <cmath>
#include <optional>

#include "../common/checks.h"
#include "../common/macros.h"

namespace rankdistill {

// Column i comes before column t in a row's ranking: higher score first, ties
// by column index (the order of a stable descending sort).
RD_HOST_DEVICE bool ranks_before(float score_i, int64_t i, float score_t, int64_t t) {
  return score_i > score_t || (score_i == score_t && i < t);
}

// `scores`/`cols` hold n targets sorted in ranking order. Returns the first
// position p whose target column (s, i) ranks before, so that (s, i) counts
// towards the rank of the targets at positions p..n-1. Branch-free binary
// search: the comparisons are data-dependent and unpredictable, so selects
// beat branches on both CPUs and GPUs.
template <typename Col>
RD_HOST_DEVICE int first_target_after(const float* scores, const Col* cols, int n, float s, int64_t i) {
  if (n == 0) return 0;
  int first = 0, len = n;
  while (len > 1) {
    const int half = len >> 1;
    const int probe = first + half - 1;
    const bool before = (s > scores[probe]) | ((s == scores[probe]) & (i < static_cast<int64_t>(cols[probe])));
    first = before ? first : first + half;
    len -= half;
  }
  const bool before = (s > scores[first]) | ((s == scores[first]) & (i < static_cast<int64_t>(cols[first])));
  return first + (before ? 0 : 1);
}

// -0.0 and +0.0 compare equal; give them one representation so that the
// bit-level keys used for sorting agree with float comparison. Adding +0.0
// turns -0.0 into +0.0 and leaves every other value (NaN included) as it is:
// no branch on every score read (no fast-math here, which could drop it).
RD_HOST_DEVICE float canonical_zero(float s) { return s + 0.0f; }

// `targets` (int64 [rows, T], ids of the num_cols columns) and the CSR pair
// of excluded columns per row; `device` names the tensor they must share a
// device with.
inline void check_targets_and_exclude(const at::Tensor& device, const char* device_name, int64_t rows,
                                      int64_t cols, const char* cols_name,
                                      const std::optional<at::Tensor>& targets,
                                      const std::optional<at::Tensor>& indptr,
                                      const std::optional<at::Tensor>& indices) {
  if (targets.has_value()) {
    check_dim(*targets, 2, "targets");
    check_dtype(*targets, at::kLong, "targets");
    check_same_device(*targets, device, "targets", device_name);
    TORCH_CHECK_VALUE(targets->size(0) == rows, "targets must have one row per row of ", device_name, " (", rows,
                      "), got ", targets->size(0));
    check_index_range(*targets, cols, "targets", cols_name);
  }
  TORCH_CHECK_VALUE(indptr.has_value() == indices.has_value(),
                    "exclude needs both indptr and indices, or neither");
  if (!indptr.has_value()) return;
  check_dim(*indptr, 1, "exclude indptr");
  check_dim(*indices, 1, "exclude indices");
  check_dtype(*indptr, at::kLong, "exclude indptr");
  check_dtype(*indices, at::kLong, "exclude indices");
  check_same_device(*indptr, device, "exclude indptr", device_name);
  check_same_device(*indices, device, "exclude indices", device_name);
  TORCH_CHECK_VALUE(indptr->size(0) == rows + 1, "exclude indptr must have B + 1 = ", rows + 1,
                    " entries, got ", indptr->size(0));
  const int64_t first = indptr->select(0, 0).item<int64_t>();
  const int64_t last = indptr->select(0, rows).item<int64_t>();
  TORCH_CHECK_VALUE(first == 0 && last == indices->size(0), "exclude indptr must start at 0 and end at nnz = ",
                    indices->size(0), ", got ", first, " and ", last);
  TORCH_CHECK_VALUE(rows == 0 || !at::lt(at::diff(*indptr), 0).any().item<bool>(),
                    "exclude indptr must be non-decreasing");
  check_index_range(*indices, cols, "exclude indices", cols_name);
}

inline void check_rank_positions_inputs(const at::Tensor& scores, const std::optional<at::Tensor>& targets,
                                        const std::optional<at::Tensor>& indptr,
                                        const std::optional<at::Tensor>& indices) {
  check_dim(scores, 2, "scores");
  check_floating(scores, "scores");
  const int64_t rows = scores.size(0), cols = scores.size(1);
  TORCH_CHECK_VALUE(cols < (int64_t{1} << 31), "scores may have at most 2^31 - 1 columns, got ", cols);
  check_targets_and_exclude(scores, "scores", rows, cols, "number of columns of scores", targets, indptr, indices);
}

// A checked call, as both backends start it: the targets made contiguous
// (undefined for all columns) and the int64 output allocated.
struct RankCall {
  int64_t num_rows, num_cols, num_targets;
  at::Tensor targets, out;

  RankCall(const at::Tensor& scores, const std::optional<at::Tensor>& targets_opt,
           const std::optional<at::Tensor>& indptr, const std::optional<at::Tensor>& indices) {
    check_rank_positions_inputs(scores, targets_opt, indptr, indices);
    num_rows = scores.size(0);
    num_cols = scores.size(1);
    if (targets_opt.has_value()) targets = targets_opt->contiguous();
    num_targets = targets.defined() ? targets.size(1) : num_cols;
    out = at::empty({num_rows, num_targets}, scores.options().dtype(at::kLong));
    // The kernels find NaN as they read the scores; with nothing to rank they
    // read none, but NaN scores are an error all the same.
    TORCH_CHECK_VALUE(!nothing_to_rank() || !at::isnan(scores).any().item<bool>(),
                      "scores contain NaN: ranks are undefined for NaN scores");
  }
  bool all_columns() const { return !targets.defined(); }
  bool nothing_to_rank() const { return num_rows == 0 || num_targets == 0; }
};

}  // namespace rankdistill
