// dot_top_columns on the CPU: parallel over blocks of rows; each block's
// scores (rows @ cols.T) are computed into a per-thread buffer by one matrix
// product, as in dot_rank_positions, and each row's best k columns are kept
// by a threshold scan: candidates gather until there are 2k, then the k best
// are kept (nth_element) and the k-th best score becomes the threshold that
// the rest of the row must reach. For a row of N scores in random order
// about k log(N / k) of them pass it, so the scan is mostly one vectorised
// maximum per 16 scores, without the sort of topk.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "../rank_positions/row_ranker_cpu.h"
#include "dot_top_columns.h"

namespace rankdistill {
namespace {

// As in dot_rank_positions: 1 MiB of float32 scores per block, at least
// kMinBlockRows rows for the matrix product's sake.
constexpr int64_t kBlockScores = int64_t{1} << 18;
constexpr int64_t kMinBlockRows = 16;

// The score of a cpu::ranking_key (its upper half inverted back).
inline float score_of_key(uint64_t key) {
  const uint32_t ascending = ~static_cast<uint32_t>(key >> 32);
  const uint32_t bits = (ascending & 0x80000000u) ? (ascending & 0x7fffffffu) : ~ascending;
  float score;
  std::memcpy(&score, &bits, sizeof(score));
  return score;
}

// One row's k best columns (smallest ranking keys: score descending, column
// ascending) into out[0..k), -1 padded; `excluded` sorted. Returns false if a
// score is NaN (nothing is written then).
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
      threshold = score_of_key(keys[k - 1]);  // the k-th best: nth_element put the better ones before it
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
  const int64_t num_rows = call.num_rows, num_cols = call.num_cols;
  const at::Tensor cols_t = call.cols.t();
  const at::Tensor indptr = indptr_opt.has_value() ? indptr_opt->contiguous() : at::Tensor();
  const at::Tensor indices = indices_opt.has_value() ? indices_opt->contiguous() : at::Tensor();
  const int64_t block_rows =
      std::min(num_rows, std::max(kMinBlockRows, kBlockScores / std::max<int64_t>(num_cols, 1)));
  const int64_t num_blocks = (num_rows + block_rows - 1) / block_rows;
  std::atomic<bool> saw_nan{false};

  AT_DISPATCH_FLOATING_TYPES(call.rows.scalar_type(), "dot_top_columns_cpu", [&] {
    int64_t* out_data = call.out.mutable_data_ptr<int64_t>();
    const int64_t* indptr_data = indptr.defined() ? indptr.const_data_ptr<int64_t>() : nullptr;
    const int64_t* indices_data = indices.defined() ? indices.const_data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, num_blocks, 1, [&](int64_t first_block, int64_t end_block) {
      at::Tensor buffer = at::empty({block_rows, num_cols}, call.rows.options());
      std::vector<int64_t> excluded;
      std::vector<uint64_t> keys;
      keys.reserve(2 * k);
      for (int64_t block = first_block; block < end_block; ++block) {
        const int64_t start = block * block_rows, rows = std::min(block_rows, num_rows - start);
        at::Tensor scores = buffer.narrow(0, 0, rows);
        // Inside parallel_for, ATen runs the product on this thread alone.
        at::mm_out(scores, call.rows.narrow(0, start, rows), cols_t);
        const scalar_t* score_data = scores.const_data_ptr<scalar_t>();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = start + r;
          if (indptr_data) {
            cpu::load_excluded(indptr_data, indices_data, row, excluded);
          }
          if (!select_row(score_data + r * num_cols, num_cols, k, excluded, keys, out_data + row * k)) {
            saw_nan.store(true, std::memory_order_relaxed);
          }
        }
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
