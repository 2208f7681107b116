// dot_top_columns on CUDA: a block of rows at a time (at most kBlockScores
// scores), one matrix product, then each score's 63-bit ranking key
// ((~float key) << 31 | column: score descending, column ascending, the
// CPU's order), excluded columns keyed last, and the k smallest keys by
// topk. Plain ATen calls on the current stream; no kernel of its own.
#include <ATen/ops/add.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bitwise_and.h>
#include <ATen/ops/bitwise_not.h>
#include <ATen/ops/bitwise_or.h>
#include <ATen/ops/eq.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/repeat_interleave.h>
#include <ATen/ops/rsub.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "dot_top_columns.h"

namespace rankdistill {
namespace {

constexpr int64_t kBlockScores = int64_t{1} << 24;
constexpr int64_t kExcludedKey = std::numeric_limits<int64_t>::max();

// The ranking key of each score of a [B, N] float32 block: smaller is better.
at::Tensor ranking_keys(const at::Tensor& scores) {
  const at::Tensor canonical = at::where(at::eq(scores, 0), at::zeros_like(scores), scores);  // -0.0 is 0.0
  const at::Tensor bits = at::bitwise_and(canonical.view(at::kInt).to(at::kLong), int64_t{0xffffffff});
  const at::Tensor negative = at::ne(at::bitwise_and(bits, int64_t{0x80000000}), 0);
  // larger float, larger ascending key (cpu::ascending_key)
  const at::Tensor ascending = at::where(negative, at::bitwise_and(at::bitwise_not(bits), int64_t{0xffffffff}),
                                         at::bitwise_or(bits, int64_t{0x80000000}));
  const at::Tensor descending = at::rsub(ascending, int64_t{0xffffffff});
  const at::Tensor columns = at::arange(scores.size(1), scores.options().dtype(at::kLong));
  return at::add(at::mul(descending, int64_t{1} << 31), columns);
}

at::Tensor dot_top_columns_cuda(const at::Tensor& row_embeddings, const at::Tensor& col_embeddings, int64_t k,
                                const std::optional<at::Tensor>& indptr, const std::optional<at::Tensor>& indices) {
  const DotTopCall call(row_embeddings, col_embeddings, k, indptr, indices);
  if (call.nothing_to_select()) return call.out;
  const c10::cuda::CUDAGuard device_guard(row_embeddings.device());
  const int64_t num_rows = call.num_rows, num_cols = call.num_cols, taken = std::min(k, num_cols);
  const int64_t block_rows = std::max<int64_t>(1, kBlockScores / std::max<int64_t>(num_cols, 1));
  call.out.fill_(-1);
  if (taken == 0) return call.out;
  for (int64_t start = 0; start < num_rows; start += block_rows) {
    const int64_t rows = std::min(block_rows, num_rows - start);
    const at::Tensor scores = at::mm(call.rows.narrow(0, start, rows), call.cols.t()).to(at::kFloat);
    TORCH_CHECK_VALUE(!at::isnan(scores).any().item<bool>(),
                      "the scores (dot products of the embeddings) contain NaN: the best columns are undefined");
    at::Tensor keys = ranking_keys(scores);
    if (indptr.has_value()) {
      const at::Tensor local = indptr->narrow(0, start, rows + 1);
      const at::Tensor counts = at::sub(local.narrow(0, 1, rows), local.narrow(0, 0, rows));
      const at::Tensor excluded_rows =
          at::repeat_interleave(at::arange(rows, counts.options()), counts, std::nullopt, std::nullopt);
      const int64_t first = local.select(0, 0).item<int64_t>(), last = local.select(0, rows).item<int64_t>();
      keys.index_put_({excluded_rows, indices->narrow(0, first, last - first)},
                      at::full({}, kExcludedKey, keys.options()));
    }
    const at::Tensor best = std::get<0>(at::topk(keys, taken, /*dim=*/1, /*largest=*/false, /*sorted=*/true));
    const at::Tensor columns = at::bitwise_and(best, (int64_t{1} << 31) - 1);
    call.out.narrow(0, start, rows).narrow(1, 0, taken).copy_(at::where(at::eq(best, kExcludedKey), -1, columns));
  }
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CUDA, m) { m.impl("dot_top_columns", &dot_top_columns_cuda); }

}  // namespace rankdistill
