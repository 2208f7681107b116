#pragma once
// The CPU's ranking of one row, shared by rank_positions (rows of a score
// matrix) and dot_rank_positions (rows of scores computed block by block).
// Two exact algorithms:
//  - counting (targets given and few): sort the row's T targets and lay a
//    table of equal-width buckets over their score range; then one pass over
//    the N scores keeps those within the range (the others count only
//    towards "above every target"), one pass over those counts each into its
//    bucket (a histogram), and only the scores that share a bucket with a
//    target are located among that bucket's targets (a short binary search).
//    A target's rank is the count of the buckets above its own plus the
//    scores of its bucket that rank before it. About O(N) per row, the
//    passes over the scores branch-free (on DCD's item side about half the
//    scores fall below the lowest target: a coin toss for a branch), the
//    first two eight scores at a time with AVX2 (float32 rows), and no
//    buffer larger than N per thread.
//  - sorting (all columns, or T comparable to N): sort the row once by 64-bit
//    (score, column) keys and read the ranks off: a radix sort of the score
//    halves (stable, so ties stay in column order) from 1024 columns, else
//    std::sort. Buffers of N per thread (never [B, N]).
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/cpu_features.h"
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

// The score of a ranking_key (its upper half mapped back).
inline float score_of_key(uint64_t key) {
  const uint32_t ascending = ~static_cast<uint32_t>(key >> 32);
  const uint32_t bits = (ascending & 0x80000000u) ? (ascending & 0x7fffffffu) : ~ascending;
  float score;
  std::memcpy(&score, &bits, sizeof(score));
  return score;
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
  std::vector<float> scores;        // in ranking order
  std::vector<int32_t> cols;        // columns fit in 31 bits (checked)
  std::vector<int32_t> buckets_of;  // the bucket of each position

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
    last_position_ = static_cast<float>(last_bucket_);
    const int buckets = last_bucket_ + 1;
    // starts_[c] = the targets in buckets >= c (the ranking order puts higher
    // buckets first), so bucket b holds positions [starts_[b + 1], starts_[b]).
    cursor_.assign(buckets, 0);
    target_bucket_.resize(n);
    for (int j = 0; j < n; ++j) ++cursor_[target_bucket_[j] = bucket(target_scores[j])];
    starts_.resize(buckets + 1);
    starts_[buckets] = 0;
    int largest = 0;
    for (int b = buckets - 1; b >= 0; --b) {
      starts_[b] = starts_[b + 1] + cursor_[b];
      largest = std::max(largest, cursor_[b]);
    }
    // locate_in's steps: the largest power of two not above the fullest bucket.
    first_step_ = 1;
    while (2 * first_step_ <= largest) first_step_ <<= 1;
    for (int b = 0; b < buckets; ++b) cursor_[b] = starts_[b + 1];
    scores.resize(n);
    cols.resize(n);
    buckets_of.resize(n);
    order.resize(n);
    for (int j = 0; j < n; ++j) {
      const int p = cursor_[target_bucket_[j]]++;
      scores[p] = target_scores[j];
      cols[p] = static_cast<int32_t>(target_cols[j]);
      buckets_of[p] = target_bucket_[j];
      order[p] = j;
    }
    // Within a bucket, by score descending, then column (ranking_key's order):
    // bucket by bucket in position order, visiting only those with targets.
    for (int first = 0, last; first < n; first = last) {
      last = end(buckets_of[first]);
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
  // end(b) if it ranks before none of them; for a score of bucket b. A binary
  // search of the same steps for every bucket of the row (those of the
  // fullest), with selects: neither the bucket's size nor the comparisons
  // steer a branch. Positions past the bucket compare as "not before" via a
  // clamped read.
  int locate_in(int b, float s, int64_t i) const {
    const int first = begin(b), last = end(b);
    int p = first;
    for (int step = first_step_; step > 0; step >>= 1) {
      const int probe = p + step - 1;
      const int read = std::min(probe, last - 1);
      const bool after = !ranks_before(s, i, scores[read], cols[read]);
      p = (probe < last) & after ? p + step : p;
    }
    return p;
  }

  // Non-decreasing in s (rounding is monotone), so the buckets keep the order:
  // a score in a higher bucket than a target's ranks before it. Defined for
  // every float and branch-free: the position is clamped to [0, last bucket]
  // before the conversion (undefined for NaN and out-of-range values), NaN
  // to 0. With one bucket, scale_ is 0 (or inf, see build): bucket 0.
  int bucket(float s) const {
    float position = (s - low_) * scale_;
    position = position > 0.0f ? position : 0.0f;
    position = position < last_position_ ? position : last_position_;
    return static_cast<int>(position);
  }

  // out[i] = bucket(scores[i]) for i < count; out has room for 8 more.
  void buckets(const float* scores, int64_t count, int32_t* out) const {
    int64_t i = 0;
#ifdef RANKDISTILL_AVX2
    if (cpu_has_avx2()) i = buckets_avx2(scores, count, out);
#endif
    for (; i < count; ++i) out[i] = bucket(scores[i]);
  }

 private:
#ifdef RANKDISTILL_AVX2
  // bucket() eight at a time, the same operations: max_ps and min_ps pick as
  // its selects do (a NaN position gives 0), cvttps2dq truncates as the cast.
  // Returns how many it did (a multiple of 8).
  RD_TARGET_AVX2 int64_t buckets_avx2(const float* scores, int64_t count, int32_t* out) const {
    const __m256 low = _mm256_set1_ps(low_), scale = _mm256_set1_ps(scale_);
    const __m256 zero = _mm256_setzero_ps(), last = _mm256_set1_ps(last_position_);
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
      const __m256 position = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(scores + i), low), scale);
      const __m256 clamped = _mm256_min_ps(_mm256_max_ps(position, zero), last);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_cvttps_epi32(clamped));
    }
    return i;
  }
#endif

  float low_ = 0.0f, scale_ = 0.0f, last_position_ = 0.0f;
  int last_bucket_ = 0, first_step_ = 1;
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

// The first pass of RowRanker::count over a row's columns [begin, end),
// continuing r: kept_scores/kept_cols get the scores within [lowest, highest]
// and their columns, in column order (r.kept of them), r.above counts the
// scores above `highest` and r.nan says whether one was NaN. kept_* have room
// for 8 entries more than the row (the AVX2 version stores 8 at a time).
struct InRange {
  int64_t kept = 0, above = 0;
  bool nan = false;
};

template <typename Row>
InRange keep_in_range(const Row& scores, int64_t begin, int64_t end, float lowest, float highest, float* kept_scores,
                      int32_t* kept_cols, InRange r) {
  for (int64_t i = begin; i < end; ++i) {  // branch-free: each written, then kept or not
    const float s = scores[i];
    r.above += s > highest;
    r.nan |= s != s;
    kept_scores[r.kept] = s;
    kept_cols[r.kept] = static_cast<int32_t>(i);
    r.kept += (s >= lowest) & (s <= highest);
  }
  return r;
}

#ifdef RANKDISTILL_AVX2
// The same over contiguous float32 scores, eight at a time: the in-range
// lanes are packed to the front by a permutation looked up from their mask,
// and stored whole.
RD_TARGET_AVX2 inline InRange keep_in_range_avx2(const float* scores, int64_t num_cols, float lowest, float highest,
                                                 float* kept_scores, int32_t* kept_cols) {
  alignas(32) static const auto packing = [] {
    std::array<std::array<int32_t, 8>, 256> table{};
    for (int mask = 0; mask < 256; ++mask) {
      int n = 0;
      for (int lane = 0; lane < 8; ++lane) {
        if (mask & (1 << lane)) table[mask][n++] = lane;
      }
    }
    return table;
  }();
  const __m256 low = _mm256_set1_ps(lowest), high = _mm256_set1_ps(highest), zero = _mm256_setzero_ps();
  __m256i cols = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i eight = _mm256_set1_epi32(8);
  InRange r;
  int nan_lanes = 0;
  int64_t i = 0;
  for (; i + 8 <= num_cols; i += 8) {
    const __m256 s = _mm256_add_ps(_mm256_loadu_ps(scores + i), zero);  // -0 + 0 = +0
    r.above += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(s, high, _CMP_GT_OQ)));
    nan_lanes |= _mm256_movemask_ps(_mm256_cmp_ps(s, s, _CMP_UNORD_Q));
    const int in = _mm256_movemask_ps(
        _mm256_and_ps(_mm256_cmp_ps(s, low, _CMP_GE_OQ), _mm256_cmp_ps(s, high, _CMP_LE_OQ)));
    const __m256i order = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packing[in].data()));
    _mm256_storeu_ps(kept_scores + r.kept, _mm256_permutevar8x32_ps(s, order));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(kept_cols + r.kept), _mm256_permutevar8x32_epi32(cols, order));
    r.kept += __builtin_popcount(in);
    cols = _mm256_add_epi32(cols, eight);
  }
  r.nan = nan_lanes != 0;
  return keep_in_range(ScoreRow<float>{scores, 1}, i, num_cols, lowest, highest, kept_scores, kept_cols, r);
}
#endif

// The row's excluded columns, sorted and without repeats (a repeated column
// is excluded once).
inline void load_excluded(const int64_t* indptr, const int64_t* indices, int64_t row, std::vector<int64_t>& out) {
  out.assign(indices + indptr[row], indices + indptr[row + 1]);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
}

// Rows at least this long are sorted by sort_by_score, shorter ones by std::sort.
constexpr int64_t kRadixSortFrom = 1024;

// Sorts ranking keys (ranking_key, in column order) as std::sort would: a
// least-significant-digit radix sort of their score halves, 11 bits a pass,
// which is stable, so equal scores keep their column order (the lower half).
// A pass whose digit is the same for every key is skipped. About 4 reads and
// 3 writes per key instead of log2(N) unpredictable comparisons: BD ranks
// every column of every row this way.
inline void sort_by_score(std::vector<uint64_t>& keys, std::vector<uint64_t>& spare, std::vector<int64_t>& counts) {
  constexpr int kBits = 11, kDigits = 1 << kBits, kPasses = 3;  // 33 bits >= the 32 of a score half
  const int64_t n = static_cast<int64_t>(keys.size());
  spare.resize(n);
  counts.assign(kPasses * kDigits, 0);
  for (const uint64_t key : keys) {
    const uint64_t score = key >> 32;
    for (int pass = 0; pass < kPasses; ++pass) ++counts[pass * kDigits + ((score >> (kBits * pass)) & (kDigits - 1))];
  }
  uint64_t *from = keys.data(), *to = spare.data();
  for (int pass = 0; pass < kPasses; ++pass) {
    int64_t* offsets = counts.data() + pass * kDigits;
    const int shift = 32 + kBits * pass;
    if (offsets[(from[0] >> shift) & (kDigits - 1)] == n) continue;
    int64_t total = 0;
    for (int digit = 0; digit < kDigits; ++digit) {
      const int64_t count = offsets[digit];
      offsets[digit] = total;
      total += count;
    }
    for (int64_t i = 0; i < n; ++i) to[offsets[(from[i] >> shift) & (kDigits - 1)]++] = from[i];
    std::swap(from, to);
  }
  if (from != keys.data()) keys.swap(spare);
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
  std::vector<float> in_scores;         // the scores within the targets' range
  std::vector<int32_t> in_cols;         // and their columns (columns fit in 31 bits)
  std::vector<int64_t> counts;          // per target position: located scores of its bucket
  std::vector<int32_t> histogram;       // per bucket: scores in it
  std::vector<int64_t> before_buckets;  // per bucket: scores in the buckets above it
  std::vector<int32_t> kept_buckets;    // the bucket of each kept score
  std::vector<int32_t> near;            // kept scores that share a bucket with a target
  std::vector<uint8_t> has_targets;     // per bucket
  // sorting path
  std::vector<uint64_t> keys, spare_keys;
  std::vector<int64_t> digit_counts;
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
    // Pass 1: the scores within the targets' range, kept with their columns
    // (each written, then kept by advancing the count or not); the others
    // only count towards `above` (NaN towards none: reported).
    in_scores.resize(num_cols + 8);
    in_cols.resize(num_cols + 8);
    float* const kept_scores = in_scores.data();
    int32_t* const kept_cols = in_cols.data();
    InRange pass;
    bool vectorised = false;
#ifdef RANKDISTILL_AVX2
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (scores.stride == 1 && cpu_has_avx2()) {
        pass = keep_in_range_avx2(scores.data, num_cols, lowest, highest, kept_scores, kept_cols);
        vectorised = true;
      }
    }
#endif
    if (!vectorised) pass = keep_in_range(scores, 0, num_cols, lowest, highest, kept_scores, kept_cols, pass);
    int64_t above = pass.above;
    const int64_t num_in = pass.kept;
    const bool nan = pass.nan;
    if (nan) saw_nan->store(true, std::memory_order_relaxed);
    // The targets in ranking order, each with its position in `targets` (a
    // column may be a target twice).
    index.build(target_scores.data(), targets, static_cast<int>(num_targets), lowest, highest, num_in, order);
    const int num_buckets = index.num_buckets();
    histogram.assign(num_buckets, 0);
    has_targets.resize(num_buckets);
    for (int b = 0; b < num_buckets; ++b) has_targets[b] = index.begin(b) < index.end(b);
    // counts[p]: located scores of target p's bucket that rank before it but
    // not before the previous target; slot num_targets takes the scores that
    // rank before none (the last bucket's end), without a branch.
    counts.assign(num_targets + 1, 0);
    near.resize(num_in);
    // Pass 2: a histogram of the kept scores over the buckets; those of
    // buckets with targets are kept again, with their bucket.
    kept_buckets.resize(num_in + 8);
    int32_t* const buckets = kept_buckets.data();
    index.buckets(kept_scores, num_in, buckets);
    int32_t* const bucket_counts = histogram.data();
    int32_t* const near_kept = near.data();
    int64_t num_near = 0;
    for (int64_t k = 0; k < num_in; ++k) {
      const int b = buckets[k];
      ++bucket_counts[b];
      near_kept[num_near] = static_cast<int32_t>(k);
      num_near += has_targets[b];
    }
    // Pass 3: those located among their bucket's targets (p = end(b): before
    // none of them, adds nothing).
    int64_t* const located = counts.data();
    for (int64_t k = 0; k < num_near; ++k) {
      const int64_t kept = near_kept[k];
      const int b = buckets[kept];
      const int p = index.locate_in(b, kept_scores[kept], kept_cols[kept]);
      located[p] += p < index.end(b);
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
    // A target's rank: the scores of the buckets above its own, then those of
    // its own bucket located at or before it. Both as running sums, without
    // a branch per bucket: one over the buckets from the top, one over the
    // targets in ranking order (`within` restarts where the bucket changes).
    before_buckets.resize(num_buckets);
    int64_t running = above;
    for (int b = num_buckets - 1; b >= 0; --b) {
      before_buckets[b] = running;
      running += histogram[b];
    }
    int64_t within = 0;
    int previous_bucket = -1;
    for (int64_t p = 0; p < num_targets; ++p) {
      const int b = index.buckets_of[p];
      within = (b == previous_bucket ? within : 0) + counts[p];
      previous_bucket = b;
      out[order[p]] = before_buckets[b] + within;
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
    if (num_cols >= kRadixSortFrom) {
      sort_by_score(keys, spare_keys, digit_counts);
    } else {
      std::sort(keys.begin(), keys.end());
    }
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
