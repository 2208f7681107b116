// rank_positions on the CPU, parallel over rows. Two exact algorithms:
//  - counting (targets given and few): sort the row's T targets and lay a
//    table of equal-width buckets over their score range; then one pass over
//    the N scores counts each into its bucket (a histogram), and only the
//    scores that share a bucket with a target are located among that bucket's
//    targets (a short binary search). A target's rank is the count of the
//    buckets above its own plus the scores of its bucket that rank before it.
//    About O(N) per row, with the per-score work branch-light (most buckets
//    hold no target), and no buffer larger than N per thread.
//  - sorting (all columns, or T comparable to N): sort the row once by 64-bit
//    (score, column) keys and read the ranks off. O(N log N), buffers of N
//    per thread (never [B, N]).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
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

  // Call after filling `scores` and `cols` (sorted in ranking order, n > 0),
  // with the number of the row's scores within the targets' range.
  void build_buckets(int64_t scores_in_range) {
    const int n = static_cast<int>(scores.size());
    low_ = scores[n - 1];
    high_ = scores[0];
    // Each bucket costs a little per row; each score that shares a bucket
    // with a target costs a search, and about n / buckets of the scores in
    // range do: the sum is least near sqrt(scores_in_range * n) buckets (a
    // trained model's top targets span few scores: few buckets).
    const double balance = std::sqrt(2.0 * static_cast<double>(scores_in_range) * n);
    int num_buckets = 16;
    while (num_buckets < balance && num_buckets < (1 << 16)) num_buckets <<= 1;
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
    // Buckets of the targets, non-increasing along the ranking order; every
    // bucket from the next target's up to this one's starts at this target's
    // successor (one bucket computation per target, not per bucket).
    int above = last_bucket_ + 1;  // buckets above `above - 1` are all set
    for (int j = 0; j < n; ++j) {
      const int b = bucket(scores[j]);
      for (int c = above; c > b; --c) starts_[c] = j;
      above = std::min(above, b);
    }
    for (int c = above; c > 0; --c) starts_[c] = n;
  }

  float lowest() const { return low_; }
  float highest() const { return high_; }
  int num_buckets() const { return last_bucket_ + 1; }
  // The targets of bucket b: positions [begin(b), end(b)) of the ranking order.
  int begin(int b) const { return starts_[b + 1]; }
  int end(int b) const { return starts_[b]; }

  // The first position of bucket b's targets that (s, i) ranks before, or
  // end(b) if it ranks before none of them; for a score of bucket b.
  int locate_in(int b, float s, int64_t i) const {
    const int first = begin(b);
    return first + first_target_after(scores.data() + first, cols.data() + first, end(b) - first, s, i);
  }


  // Non-decreasing in s (rounding is monotone), so the buckets keep the order:
  // a score in a higher bucket than a target's ranks before it.
  // For low <= s <= high, 0 <= (s - low) * scale <= about num_buckets; it is
  // clamped before the conversion all the same (which is undefined for NaN
  // and out-of-range values): NaN fails the test and gets the last bucket.
  int bucket(float s) const {
    if (last_bucket_ == 0) return 0;
    const float position = (s - low_) * scale_;
    return position < static_cast<float>(last_bucket_) ? static_cast<int>(position) : last_bucket_;
  }

 private:

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
  std::vector<std::pair<uint64_t, int64_t>> keyed;
  std::vector<int64_t> order;
  TargetIndex index;
  std::vector<int64_t> counts;      // per target position: located scores of its bucket
  std::vector<int32_t> histogram;   // per bucket: scores in it (columns fit in 31 bits)
  std::vector<int32_t> near;        // columns that share a bucket with a target
  std::vector<uint8_t> has_targets; // per bucket
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
    // The targets in ranking order: their (score, column) keys sorted, each
    // with its position in `targets` (a column may be a target twice).
    keyed.resize(num_targets);
    for (int64_t j = 0; j < num_targets; ++j) keyed[j] = {ranking_key(scores[targets[j]], targets[j]), j};
    std::sort(keyed.begin(), keyed.end());
    order.resize(num_targets);
    index.scores.resize(num_targets);
    index.cols.resize(num_targets);
    for (int64_t j = 0; j < num_targets; ++j) {
      order[j] = keyed[j].second;
      index.cols[j] = static_cast<int32_t>(targets[order[j]]);
      index.scores[j] = scores[targets[order[j]]];
    }
    const float lowest = index.scores[num_targets - 1], highest = index.scores[0];
    int64_t in_range = 0;
    for (int64_t i = 0; i < num_cols; ++i) {
      const float s = scores[i];
      in_range += (s >= lowest) & (s <= highest);
    }
    index.build_buckets(in_range);
    const int num_buckets = index.num_buckets();
    histogram.assign(num_buckets, 0);
    has_targets.assign(num_buckets, 0);
    for (int b = 0; b < num_buckets; ++b) has_targets[b] = index.begin(b) < index.end(b);
    counts.assign(num_targets, 0);
    near.resize(num_cols);
    int64_t above = 0, num_near = 0;
    bool nan = false;
    // Pass 1: a histogram of the scores over the buckets; the columns of
    // buckets with targets are kept (appended without a branch).
    for (int64_t i = 0; i < num_cols; ++i) {
      const float s = scores[i];
      if (!(s >= lowest)) {  // below every target (or NaN): counts for none
        nan |= std::isnan(s);
        continue;
      }
      if (s > highest) {  // before every target
        ++above;
        continue;
      }
      const int b = index.bucket(s);
      ++histogram[b];
      near[num_near] = static_cast<int32_t>(i);
      num_near += has_targets[b];
    }
    if (nan) saw_nan->store(true, std::memory_order_relaxed);
    // Pass 2: those columns located among their bucket's targets.
    for (int64_t k = 0; k < num_near; ++k) {
      const int64_t i = near[k];
      const float s = scores[i];
      const int b = index.bucket(s);
      const int p = index.locate_in(b, s, i);
      if (p < index.end(b)) ++counts[p];
    }
    exclusions(row);
    for (const int64_t i : excluded) {  // counted above: taken back
      const float s = scores[i];
      if (!(s >= lowest)) continue;
      if (s > highest) {
        --above;
        continue;
      }
      const int b = index.bucket(s);
      --histogram[b];
      const int p = index.locate_in(b, s, i);
      if (p < index.end(b)) --counts[p];
    }
    // Targets in ranking order, bucket by bucket from the top: the scores of
    // the buckets above, then those of its own bucket located at or before it.
    int64_t before_bucket = above;
    for (int b = num_buckets - 1; b >= 0; --b) {
      int64_t within = 0;
      for (int p = index.begin(b); p < index.end(b); ++p) {
        within += counts[p];
        out[order[p]] = before_bucket + within;
      }
      before_bucket += histogram[b];
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
