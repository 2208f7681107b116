// rank_positions on the CPU, parallel over rows. Two exact algorithms:
//  - counting (targets given and few): sort the row's T targets, then one pass
//    over the N scores, each located among the targets (a table of buckets
//    over the targets' score range, then a short binary search); a prefix sum of the
//    per-slot counts gives every target's rank. About O(N) per row, and no
//    buffer larger than T per thread.
//  - sorting (all columns, or T comparable to N): sort the row once by 64-bit
//    (score, column) keys and read the ranks off. O(N log N), buffers of N
//    per thread (never [B, N]).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "rank_positions.h"

namespace rankdistill {
namespace {

// Order-preserving map of floats to unsigned integers (larger float, larger
// key). Scores must have a canonical zero and no NaN.
inline uint32_t ascending_key(float score) {
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Sorting these keys ascending gives the ranking order (score descending,
// column ascending).
inline uint64_t ranking_key(float score, int64_t col) {
  return (static_cast<uint64_t>(~ascending_key(score)) << 32) | static_cast<uint32_t>(col);
}

// A row's targets in ranking order, with a table of equal-width buckets over
// the range of their scores: a score's bucket bounds the targets it can fall
// between, so locating it costs a short search instead of log2(T)
// unpredictable steps.
class TargetIndex {
 public:
  std::vector<float> scores;
  std::vector<int32_t> cols;  // columns fit in 31 bits (checked)

  // Call after filling `scores` and `cols` (sorted in ranking order, n > 0).
  void build_buckets() {
    const int n = static_cast<int>(scores.size());
    low_ = scores[n - 1];
    high_ = scores[0];
    int num_buckets = 16;
    while (num_buckets < 2 * n && num_buckets < (1 << 16)) num_buckets <<= 1;
    const float span = high_ - low_;
    const bool spread = std::isfinite(span) && span > 0.0f;
    scale_ = spread ? static_cast<float>(num_buckets) / span : 0.0f;
    // An infinite or empty span leaves one bucket: a plain binary search. So
    // does a span so small that the scale overflows (below num_buckets /
    // FLT_MAX, at most 2e-34: targets a few subnormals apart), where
    // (s - low) * inf would be NaN or inf, and no index.
    last_bucket_ = spread && std::isfinite(scale_) ? num_buckets - 1 : 0;
    // starts_[b + 1] = first position whose bucket is <= b; starts_[0] = n.
    starts_.assign(last_bucket_ + 2, n);
    int j = 0;
    for (int b = last_bucket_; b >= 0; --b) {
      while (j < n && bucket(scores[j]) > b) ++j;
      starts_[b + 1] = j;
    }
  }

  float lowest() const { return low_; }

  // first_target_after for a score >= lowest().
  int locate(float s, int64_t i) const {
    if (s > high_) return 0;
    const int b = bucket(s);
    const int begin = starts_[b + 1], end = starts_[b];
    return begin + first_target_after(scores.data() + begin, cols.data() + begin, end - begin, s, i);
  }

 private:
  // Non-decreasing in s (rounding is monotone), so the buckets keep the order.
  // For low <= s <= high, 0 <= (s - low) * scale <= about num_buckets; it is
  // clamped before the conversion all the same (which is undefined for NaN
  // and out-of-range values): NaN fails the test and gets the last bucket.
  int bucket(float s) const {
    if (last_bucket_ == 0) return 0;
    const float position = (s - low_) * scale_;
    return position < static_cast<float>(last_bucket_) ? static_cast<int>(position) : last_bucket_;
  }

  float low_ = 0.0f, high_ = 0.0f, scale_ = 0.0f;
  int last_bucket_ = 0;
  std::vector<int> starts_;
};

// A row of scores as floats, whatever the dtype and strides.
template <typename scalar_t>
struct ScoreRow {
  const scalar_t* data;
  int64_t stride;
  float operator[](int64_t i) const { return canonical_zero(static_cast<float>(data[i * stride])); }
};

// The row's excluded columns, sorted and without repeats (a repeated column
// is excluded once).
inline void load_excluded(const int64_t* indptr, const int64_t* indices, int64_t row, std::vector<int64_t>& out) {
  out.assign(indices + indptr[row], indices + indptr[row + 1]);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
}

template <typename scalar_t>
struct RowRanker {
  int64_t num_cols;
  const int64_t* indptr;   // nullptr when nothing is excluded
  const int64_t* indices;
  std::atomic<bool>* saw_nan;

  std::vector<int64_t> excluded;
  // counting path
  std::vector<int64_t> order;
  TargetIndex index;
  std::vector<int64_t> counts;
  // sorting path
  std::vector<uint64_t> keys;
  std::vector<uint8_t> is_excluded;
  std::vector<int64_t> column_rank;

  void exclusions(int64_t row) {
    if (indptr) {
      load_excluded(indptr, indices, row, excluded);
    } else {
      excluded.clear();
    }
  }

  void count(const ScoreRow<scalar_t>& scores, int64_t row, const int64_t* targets, int64_t num_targets,
             int64_t* out) {
    for (int64_t j = 0; j < num_targets; ++j) {
      if (std::isnan(scores[targets[j]])) {  // NaN has no place in the order (and would break the sort)
        saw_nan->store(true, std::memory_order_relaxed);
        return;
      }
    }
    order.resize(num_targets);
    for (int64_t j = 0; j < num_targets; ++j) order[j] = j;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return ranks_before(scores[targets[a]], targets[a], scores[targets[b]], targets[b]);
    });
    index.scores.resize(num_targets);
    index.cols.resize(num_targets);
    for (int64_t j = 0; j < num_targets; ++j) {
      index.cols[j] = static_cast<int32_t>(targets[order[j]]);
      index.scores[j] = scores[targets[order[j]]];
    }
    index.build_buckets();
    counts.assign(num_targets + 1, 0);
    const float lowest = index.lowest();
    bool nan = false;
    for (int64_t i = 0; i < num_cols; ++i) {
      const float s = scores[i];
      if (!(s >= lowest)) {  // below every target (or NaN): counts for none
        nan |= std::isnan(s);
        continue;
      }
      ++counts[index.locate(s, i)];
    }
    if (nan) saw_nan->store(true, std::memory_order_relaxed);
    exclusions(row);
    for (const int64_t i : excluded) {
      const float s = scores[i];
      if (!(s >= lowest)) continue;
      --counts[index.locate(s, i)];
    }
    int64_t rank = 0;
    for (int64_t j = 0; j < num_targets; ++j) {
      rank += counts[j];
      out[order[j]] = rank;
    }
  }

  // Ranks of all columns into `ranks` (length num_cols).
  void sort_all(const ScoreRow<scalar_t>& scores, int64_t row, int64_t* ranks) {
    keys.resize(num_cols);
    bool nan = false;
    for (int64_t i = 0; i < num_cols; ++i) {
      const float s = scores[i];
      nan |= std::isnan(s);
      keys[i] = ranking_key(s, i);
    }
    if (nan) {
      saw_nan->store(true, std::memory_order_relaxed);
      return;
    }
    std::sort(keys.begin(), keys.end());
    exclusions(row);
    is_excluded.resize(num_cols, 0);
    for (const int64_t i : excluded) is_excluded[i] = 1;
    int64_t rank = 0;
    for (int64_t position = 0; position < num_cols; ++position) {
      const int64_t col = static_cast<int64_t>(keys[position] & 0xffffffffu);
      ranks[col] = rank;
      rank += 1 - is_excluded[col];
    }
    for (const int64_t i : excluded) is_excluded[i] = 0;
  }
};

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
  // Counting costs about N log T per row, sorting N log N plus a larger
  // constant: sort only when the targets are a sizeable part of the row.
  const bool use_sort = all_columns || 4 * num_targets >= num_cols;
  std::atomic<bool> saw_nan{false};
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(num_cols, 1));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "rank_positions_cpu", [&] {
    const scalar_t* score_data = scores.const_data_ptr<scalar_t>();
    const int64_t row_stride = scores.stride(0), col_stride = scores.stride(1);
    const int64_t* target_data = all_columns ? nullptr : targets.const_data_ptr<int64_t>();
    int64_t* out_data = out.mutable_data_ptr<int64_t>();
    at::parallel_for(0, num_rows, grain, [&](int64_t begin, int64_t end) {
      RowRanker<scalar_t> ranker{num_cols,
                                 indptr.defined() ? indptr.const_data_ptr<int64_t>() : nullptr,
                                 indices.defined() ? indices.const_data_ptr<int64_t>() : nullptr,
                                 &saw_nan};
      std::vector<int64_t> all_ranks;
      for (int64_t row = begin; row < end; ++row) {
        const ScoreRow<scalar_t> row_scores{score_data + row * row_stride, col_stride};
        int64_t* row_out = out_data + row * num_targets;
        if (!use_sort) {
          ranker.count(row_scores, row, target_data + row * num_targets, num_targets, row_out);
        } else if (all_columns) {
          ranker.sort_all(row_scores, row, row_out);
        } else {
          all_ranks.resize(num_cols);
          ranker.sort_all(row_scores, row, all_ranks.data());
          const int64_t* row_targets = target_data + row * num_targets;
          for (int64_t j = 0; j < num_targets; ++j) row_out[j] = all_ranks[row_targets[j]];
        }
      }
    });
  });
  TORCH_CHECK_VALUE(!saw_nan.load(), "scores contain NaN: ranks are undefined for NaN scores");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CPU, m) { m.impl("rank_positions", &rank_positions_cpu); }

}  // namespace rankdistill
