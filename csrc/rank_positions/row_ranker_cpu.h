#pragma once
// The CPU's ranking of one row, shared by rank_positions (rows of a score
// matrix) and dot_rank_positions (rows of scores computed block by block).
// Two exact algorithms:
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
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "rank_positions.h"

namespace rankdistill {
namespace cpu {

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
// unpredictable steps. The buckets also order the targets: a counting sort
// by bucket, then a sort of each bucket's few targets, instead of one
// comparison sort of all T (which cost more than the pass over the row when
// T is a tenth of N).
class TargetIndex {
 public:
  std::vector<float> scores;  // in ranking order
  std::vector<int32_t> cols;  // columns fit in 31 bits (checked)

  // Orders the n > 0 targets (`target_scores`, canonical and without NaN,
  // lying in [low, high], and `target_cols`) and lays the buckets; order[p]
  // is the target (0..n-1) at position p. scores_in_range: the row's scores
  // within [low, high].
  void build(const float* target_scores, const int64_t* target_cols, int n, float low, float high,
             int64_t scores_in_range, std::vector<int64_t>& order) {
    low_ = low;
    // Each bucket costs a little per row; each score that shares a bucket
    // with a target costs a search, and about n / buckets of the scores in
    // range do: the sum is least near sqrt(scores_in_range * n) buckets (a
    // trained model's top targets span few scores: few buckets).
    const double balance = std::sqrt(2.0 * static_cast<double>(scores_in_range) * n);
    int num_buckets = 16;
    while (num_buckets < balance && num_buckets < (1 << 16)) num_buckets <<= 1;
    const float span = high - low_;
    const bool spread = std::isfinite(span) && span > 0.0f;
    scale_ = spread ? static_cast<float>(num_buckets) / span : 0.0f;
    // An infinite or empty span leaves one bucket: a plain binary search. So
    // does a span so small that the scale overflows (below num_buckets /
    // FLT_MAX, at most 2e-34: targets a few subnormals apart), where
    // (s - low) * inf would be NaN or inf, and no index.
    last_bucket_ = spread && std::isfinite(scale_) ? num_buckets - 1 : 0;
    const int buckets = last_bucket_ + 1;
    // starts_[c] = the targets in buckets >= c (the ranking order puts higher
    // buckets first), so bucket b holds positions [starts_[b + 1], starts_[b]).
    cursor_.assign(buckets, 0);
    target_bucket_.resize(n);
    for (int j = 0; j < n; ++j) ++cursor_[target_bucket_[j] = bucket(target_scores[j])];
    starts_.resize(buckets + 1);
    starts_[buckets] = 0;
    for (int b = buckets - 1; b >= 0; --b) starts_[b] = starts_[b + 1] + cursor_[b];
    for (int b = 0; b < buckets; ++b) cursor_[b] = starts_[b + 1];
    scores.resize(n);
    cols.resize(n);
    order.resize(n);
    for (int j = 0; j < n; ++j) {
      const int p = cursor_[target_bucket_[j]]++;
      scores[p] = target_scores[j];
      cols[p] = static_cast<int32_t>(target_cols[j]);
      order[p] = j;
    }
    // Within a bucket, by score descending, then column (ranking_key's order).
    for (int b = 0; b < buckets; ++b) {
      const int first = starts_[b + 1], last = starts_[b];
      if (last - first < 2) continue;
      keyed_.resize(last - first);
      for (int p = first; p < last; ++p) keyed_[p - first] = {ranking_key(scores[p], cols[p]), order[p]};
      std::sort(keyed_.begin(), keyed_.end());
      for (int p = first; p < last; ++p) {
        const int64_t j = keyed_[p - first].second;
        order[p] = j;
        scores[p] = target_scores[j];
        cols[p] = static_cast<int32_t>(target_cols[j]);
      }
    }
  }

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
  float low_ = 0.0f, scale_ = 0.0f;
  int last_bucket_ = 0;
  std::vector<int> starts_, cursor_, target_bucket_;
  std::vector<std::pair<uint64_t, int64_t>> keyed_;
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

// Ranks rows one at a time with buffers reused across rows (one per thread).
template <typename scalar_t>
struct RowRanker {
  int64_t num_cols;
  const int64_t* indptr;   // nullptr when nothing is excluded
  const int64_t* indices;
  std::atomic<bool>* saw_nan;
  bool use_sort;           // sort the row rather than count (use_sorting)

  std::vector<int64_t> excluded;
  // counting path
  std::vector<float> target_scores;
  std::vector<int64_t> order;
  TargetIndex index;
  std::vector<int64_t> counts;      // per target position: located scores of its bucket
  std::vector<int32_t> histogram;   // per bucket: scores in it (columns fit in 31 bits)
  std::vector<int32_t> near;        // columns that share a bucket with a target
  std::vector<uint8_t> has_targets; // per bucket
  // sorting path
  std::vector<uint64_t> keys;
  std::vector<uint8_t> is_excluded;
  std::vector<int64_t> all_ranks;

  // Row `row`'s ranks of `targets` (num_targets of them; nullptr: all columns)
  // into `out`.
  void rank(const ScoreRow<scalar_t>& scores, int64_t row, const int64_t* targets, int64_t num_targets,
            int64_t* out) {
    if (!use_sort) {
      count(scores, row, targets, num_targets, out);
    } else if (targets == nullptr) {
      sort_all(scores, row, out);
    } else {
      all_ranks.resize(num_cols);
      sort_all(scores, row, all_ranks.data());
      for (int64_t j = 0; j < num_targets; ++j) out[j] = all_ranks[targets[j]];
    }
  }

  void exclusions(int64_t row) {
    if (indptr) {
      load_excluded(indptr, indices, row, excluded);
    } else {
      excluded.clear();
    }
  }

  void count(const ScoreRow<scalar_t>& scores, int64_t row, const int64_t* targets, int64_t num_targets,
             int64_t* out) {
    target_scores.resize(num_targets);
    float lowest = INFINITY, highest = -INFINITY;
    for (int64_t j = 0; j < num_targets; ++j) {
      const float s = target_scores[j] = scores[targets[j]];
      if (std::isnan(s)) {  // NaN has no place in the order
        saw_nan->store(true, std::memory_order_relaxed);
        return;
      }
      lowest = std::min(lowest, s);
      highest = std::max(highest, s);
    }
    int64_t in_range = 0;
    for (int64_t i = 0; i < num_cols; ++i) {
      const float s = scores[i];
      in_range += (s >= lowest) & (s <= highest);
    }
    // The targets in ranking order, each with its position in `targets` (a
    // column may be a target twice).
    index.build(target_scores.data(), targets, static_cast<int>(num_targets), lowest, highest, in_range, order);
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

// Counting costs about N log T per row, sorting N log N plus a larger
// constant: sort only when the targets are a sizeable part of the row.
inline bool use_sorting(bool all_columns, int64_t num_targets, int64_t num_cols) {
  return all_columns || 4 * num_targets >= num_cols;
}

}  // namespace cpu
}  // namespace rankdistill
