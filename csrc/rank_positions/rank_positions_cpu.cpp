// rank_positions on the CPU, parallel over rows; each row ranked by
// cpu::RowRanker (row_ranker_cpu.h: counting, or sorting for many targets).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "row_ranker_cpu.h"

namespace rankdistill {
namespace {

at::Tensor rank_positions_cpu(const at::Tensor& scores, const std::optional<at::Tensor>& targets_opt,
                              const std::optional<at::Tensor>& indptr_opt,
                              const std::optional<at::Tensor>& indices_opt) {
  const RankCall call(scores, targets_opt, indptr_opt, indices_opt);
  if (call.nothing_to_rank()) return call.out;
  const int64_t num_rows = call.num_rows, num_cols = call.num_cols, num_targets = call.num_targets;
  const bool all_columns = call.all_columns();
  const at::Tensor& targets = call.targets;
  const at::Tensor& out = call.out;

  const at::Tensor indptr = indptr_opt.has_value() ? indptr_opt->contiguous() : at::Tensor();
  const at::Tensor indices = indices_opt.has_value() ? indices_opt->contiguous() : at::Tensor();
  std::atomic<bool> saw_nan{false};
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(num_cols, 1));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "rank_positions_cpu", [&] {
    const scalar_t* score_data = scores.const_data_ptr<scalar_t>();
    const int64_t row_stride = scores.stride(0), col_stride = scores.stride(1);
    const int64_t* target_data = all_columns ? nullptr : targets.const_data_ptr<int64_t>();
    int64_t* out_data = out.mutable_data_ptr<int64_t>();
    at::parallel_for(0, num_rows, grain, [&](int64_t begin, int64_t end) {
      cpu::RowRanker<scalar_t> ranker{num_cols,
                                      indptr.defined() ? indptr.const_data_ptr<int64_t>() : nullptr,
                                      indices.defined() ? indices.const_data_ptr<int64_t>() : nullptr,
                                      &saw_nan, cpu::use_sorting(all_columns, num_targets, num_cols)};
      for (int64_t row = begin; row < end; ++row) {
        ranker.rank({score_data + row * row_stride, col_stride}, row,
                    all_columns ? nullptr : target_data + row * num_targets, num_targets,
                    out_data + row * num_targets);
      }
    });
  });
  TORCH_CHECK_VALUE(!saw_nan.load(), "scores contain NaN: ranks are undefined for NaN scores");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CPU, m) { m.impl("rank_positions", &rank_positions_cpu); }

}  // namespace rankdistill
