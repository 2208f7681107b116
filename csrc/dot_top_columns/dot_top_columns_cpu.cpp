// dot_top_columns on the CPU: the scores rows @ cols.T a block of rows at a
// time, as dot_rank_positions walks them (score_blocks_cpu.h), and each row's
// best k columns kept by a threshold scan: candidates gather until there
// are 2k, then the k best are kept (nth_element) and the k-th best score
// becomes the threshold that the rest of the row must reach. For a row of N
// scores in random order about k log(N / k) of them pass it, so the scan is
// mostly one vectorised maximum per 16 scores, without the sort of topk.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "../dot_rank_positions/score_blocks_cpu.h"
#include "../rank_positions/row_ranker_cpu.h"
#include "dot_top_columns.h"

namespace rankdistill {
namespace {

// At least 16 rows per block: a row's scan is cheap next to re-reading cols
// for a small product (16 rows took 2.3 s where 4 took 3.1 s, 5,000 x 100,000).
constexpr int64_t kMinBlockRows = 16;

// Scores scanned per step: their maximum (a vectorised reduction) against
// the threshold rejects most steps without looking at each score.
constexpr int64_t kScanStep = 16;

// One row's k best columns (smallest ranking keys: score descending, column
// ascending) into out[0..k), -1 padded; `excluded` sorted. Returns false if a
// score is NaN (nothing is written then).
template <typename scalar_t>
bool select_row(const scalar_t* scores, int64_t num_cols, int64_t k, const std::vector<int64_t>& excluded,
                std::vector<uint64_t>& keys, int64_t* out) {
  int64_t nan = 0;
  for (int64_t i = 0; i < num_cols; ++i) nan += scores[i] != scores[i];  // vectorised, unlike isnan
  if (nan) return false;
  keys.clear();
  float threshold = -INFINITY;  // a score below the k-th best kept cannot enter
  const auto offer = [&](int64_t i) {
    const float s = canonical_zero(static_cast<float>(scores[i]));
    if (!(s >= threshold)) return;
    if (!excluded.empty() && std::binary_search(excluded.begin(), excluded.end(), i)) return;
    keys.push_back(cpu::ranking_key(s, i));
    if (static_cast<int64_t>(keys.size()) == 2 * k) {
      std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end());
      keys.resize(k);
      threshold = cpu::score_of_key(keys[k - 1]);  // the k-th best: nth_element put the better ones before it
    }
  };
  int64_t i = 0;
  for (; i + kScanStep <= num_cols; i += kScanStep) {
    float largest = static_cast<float>(scores[i]);
    for (int64_t j = 1; j < kScanStep; ++j) {
      const float s = static_cast<float>(scores[i + j]);
      largest = s > largest ? s : largest;
    }
    if (!(largest >= threshold)) continue;  // the common case, once k are kept
    for (int64_t j = 0; j < kScanStep; ++j) offer(i + j);
  }
  for (; i < num_cols; ++i) offer(i);
  if (static_cast<int64_t>(keys.size()) > k) {
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end());
    keys.resize(k);
  }
  std::sort(keys.begin(), keys.end());
  const int64_t taken = static_cast<int64_t>(keys.size());
  for (int64_t j = 0; j < taken; ++j) out[j] = static_cast<int64_t>(keys[j] & 0xffffffffu);
  std::fill(out + taken, out + k, int64_t{-1});
  return true;
}

at::Tensor dot_top_columns_cpu(const at::Tensor& row_embeddings, const at::Tensor& col_embeddings, int64_t k,
                               const std::optional<at::Tensor>& indptr_opt,
                               const std::optional<at::Tensor>& indices_opt) {
  const DotTopCall call(row_embeddings, col_embeddings, k, indptr_opt, indices_opt);
  if (call.nothing_to_select()) return call.out;
  const int64_t num_cols = call.num_cols;
  const at::Tensor indptr = indptr_opt.has_value() ? indptr_opt->contiguous() : at::Tensor();
  const at::Tensor indices = indices_opt.has_value() ? indices_opt->contiguous() : at::Tensor();
  const int64_t* indptr_data = indptr.defined() ? indptr.const_data_ptr<int64_t>() : nullptr;
  const int64_t* indices_data = indices.defined() ? indices.const_data_ptr<int64_t>() : nullptr;
  int64_t* out_data = call.out.mutable_data_ptr<int64_t>();
  std::atomic<bool> saw_nan{false};
  struct RowState {
    std::vector<int64_t> excluded;
    std::vector<uint64_t> keys;
  };

  AT_DISPATCH_FLOATING_TYPES(call.rows.scalar_type(), "dot_top_columns_cpu", [&] {
    cpu::for_each_score_row<scalar_t>(
        call.rows, call.cols, kMinBlockRows,
        [&] {
          RowState state;
          state.keys.reserve(2 * k);
          return state;
        },
        [&](RowState& state, const scalar_t* scores, int64_t row) {
          if (indptr_data) cpu::load_excluded(indptr_data, indices_data, row, state.excluded);
          if (!select_row(scores, num_cols, k, state.excluded, state.keys, out_data + row * k)) {
            saw_nan.store(true, std::memory_order_relaxed);
          }
        });
  });
  TORCH_CHECK_VALUE(!saw_nan.load(),
                    "the scores (dot products of the embeddings) contain NaN: the best columns are undefined");
  return call.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CPU, m) { m.impl("dot_top_columns", &dot_top_columns_cpu); }

}  // namespace rankdistill
