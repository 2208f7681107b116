// rank_positions on CUDA: by counting (cuda::rank_positions_kernel in
// rank_kernel.cuh) for up to cuda::kMaxCountTargets targets per row; with no targets
// given, the targets are the N columns themselves, and for very many targets
// (all columns of a large catalogue) counting would be quadratic, so rows are
// ranked by a stable sort instead (rank_by_sort), in blocks of rows whose
// temporaries stay within kSortBudget elements.
#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/diff.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "rank_kernel.cuh"

namespace rankdistill {
namespace {

// Elements of one row block of rank_by_sort: about 50 bytes of temporaries each.
constexpr int64_t kSortBudget = int64_t{1} << 24;

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
  if (num_targets > cuda::kMaxCountTargets) {
    rank_by_sort(scores, targets, indptr_opt, indices_opt, out);
    return out;
  }

  at::Tensor saw_nan = at::zeros({}, scores.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "rank_positions_cuda", [&] {
    const cuda::ScoreMatrixRows<scalar_t> source{scores.const_data_ptr<scalar_t>(), scores.stride(0),
                                                 scores.stride(1)};
    cuda::launch_rank_kernel(source, num_rows, num_cols, targets, num_targets, indptr_opt, indices_opt, out,
                             saw_nan);
  });
  TORCH_CHECK_VALUE(saw_nan.item<int>() == 0, "scores contain NaN: ranks are undefined for NaN scores");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CUDA, m) { m.impl("rank_positions", &rank_positions_cuda); }

}  // namespace rankdistill
