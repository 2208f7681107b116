// Sampling without replacement on the CPU: every positive-weight column has
// the Philox key log(u) / w of philox.h (w scaled by a power of two per row),
// the same keys as the CUDA backend, and a per-row selection keeps the k
// largest (see sample_row). Parallel over rows; the draws do not depend on the
// thread count.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Dispatch_v2.h>
#include <ATen/Parallel.h>
#include <ATen/core/Generator.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

#include "../common/philox_cpu.h"
#include "sampling.h"

namespace rankdistill {
namespace {

uint64_t draw_seed(const std::optional<at::Generator>& generator, const at::Device& device) {
  check_generator_device(generator, device);
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

using Candidate = std::pair<double, int64_t>;  // (key log(u) / w, column)

// Function objects rather than functions, so that nth_element and sort inline them.
constexpr auto drawn_first = [](const Candidate& a, const Candidate& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
};

// The value of rank `kth` (0: the smallest) among values[0, count): a
// quickselect whose partitions are branch-free, as comparisons of random keys
// are unpredictable (std::nth_element mispredicts about half of them).
// values and buffer (count entries each) are overwritten.
double kth_smallest(double* values, int64_t count, int64_t kth, double* buffer) {
  while (count > 16) {
    const double a = values[0], b = values[count / 2], c = values[count - 1];
    const double pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));  // median of three
    int64_t below = 0, above = 0;
    for (int64_t i = 0; i < count; ++i) {
      const double v = values[i];
      buffer[below] = v;
      below += v < pivot;
      buffer[count - 1 - above] = v;
      above += v > pivot;
    }
    // Each pass drops the pivot's copies at least, so it ends.
    std::swap(values, buffer);
    if (kth < below) {
      count = below;
    } else if (kth >= count - above) {
      kth -= count - above;
      values += count - above;
      count = above;
    } else {
      return pivot;
    }
  }
  std::nth_element(values, values + kth, values + count);
  return values[kth];
}

// Relative slack on every key bound, far above their rounding errors.
constexpr double kMargin = 1.0 + 1e-9;
// Cells whose lower key bounds pick the pivot of sample_row's cut.
constexpr int64_t kPivotSample = 64;  // a power of two: s n / 64 is a shift

// One row's cells of positive weight: column, uniform u and value v (sampling.h).
struct RowCells {
  std::vector<int64_t> cols;
  std::vector<double> uniforms, values, scratch, buffer;
  std::vector<int64_t> picked;
  std::vector<Candidate> best;
  explicit RowCells(int64_t num_cols)
      : cols(num_cols), uniforms(num_cols), values(num_cols), scratch(num_cols), buffer(num_cols), picked(num_cols) {}
};

// Fills cells.best with the row's sample (the k largest keys, unordered):
// every positive-weight column has the key log(u) / w of philox.h, w scaled
// by the row's power of two (the CUDA backend's keys). Exact keys (a log and
// DCD's tanh) are computed only for the columns that can be drawn:
//  1. A cut L no larger than the k-th largest key: the k-th largest of the
//     lower bounds (u - 1) / (u w_low) <= log(u) / w.
//  2. The candidates: columns whose upper bound (u - 1) / w_up reaches L.
//  3. Their exact keys; the k largest are the sample.
// The k-th largest lower bound is found among the columns above a pivot
// taken from a strided sample of them; the test against the pivot squares
// both sides (no division or square root) where the keys are unscaled and
// small enough. Returns false if a weight was invalid.
template <typename Weights>
bool sample_row(const Weights& weights, int64_t row, int64_t stream_row, int64_t num_cols, int64_t k,
                uint64_t seed, RowCells& cells) {
  cells.best.clear();
  KeyScale scale;
  if (weights.needs_key_scale()) {
    double largest_order = -INFINITY;
    for (int64_t col = 0; col < num_cols; ++col) {
      const double order = weights.bound_order(row, col);
      largest_order = order > largest_order ? order : largest_order;  // branch-free, NaN skipped
    }
    scale = key_scale(weights.largest_bound(largest_order));
  }
  // The positive cells, with their random numbers; none are spent on blocks
  // of zero weights.
  bool invalid = false;
  int64_t n = 0;
  int64_t* cols = cells.cols.data();
  double *uniforms = cells.uniforms.data(), *values = cells.values.data();
  constexpr int64_t block = 2 * kPairsPerBlock;
  for (int64_t base = 0; base < num_cols; base += block) {
    const int64_t width = std::min(block, num_cols - base);
    double v[block], u[block];
    int64_t positive[block];
    bool any_positive = false;
    for (int64_t j = 0; j < width; ++j) {  // branch-free: the signs of DCD's gaps are unpredictable
      v[j] = weights.value(row, base + j);
      invalid |= Weights::invalid_value(v[j]);
      positive[j] = Weights::positive_value(v[j]);
      any_positive |= positive[j];
    }
    if (!any_positive) continue;
    uniform_pairs(seed, 0, stream_row, base / 2, (width + 1) / 2, u);
    for (int64_t j = 0; j < width; ++j) {
      cols[n] = base + j;
      uniforms[n] = u[j];
      values[n] = v[j];
      n += positive[j];
    }
  }
  const bool valid = !invalid;
  if (k == 0) return valid;

  // 1. The cut.
  double cut = -INFINITY;
  if (n > k) {
    const auto lower_key = [&](int64_t i) {
      return (uniforms[i] - 1.0) / (uniforms[i] * scale.apply(Weights::lower_of(values[i]))) * kMargin;
    };
    double *scratch = cells.scratch.data(), *buffer = cells.buffer.data();
    bool have_cut = false;
    if (!weights.needs_key_scale() && n > 4 * k) {
      // Unscaled keys: the squares q = (1 - u)^2 den margin^2 / (u^2 num) of
      // the lower bounds order them (num / den is the square of w_low), and
      // q <= Q is a test without a division. squared_lower_key gives q's
      // numerator and denominator.
      const auto squared_lower_key = [&](int64_t i) {
        const double u = uniforms[i];
        double num, den;
        Weights::lower_squared(values[i], num, den);
        return std::pair{(1.0 - u) * (1.0 - u) * den * (kMargin * kMargin), u * u * num};
      };
      const auto squared_lower_key_value = [&](int64_t i) {
        const auto [numerator, denominator] = squared_lower_key(i);
        return numerator / denominator;
      };
      const int64_t m = std::min(kPivotSample, n);
      for (int64_t s = 0; s < m; ++s) {
        scratch[s] = squared_lower_key_value(m == kPivotSample ? s * n / kPivotSample : s);
      }
      // about 1.3 k of the n bounds are expected above the pivot
      const int64_t j = std::min(m, m * k * 13 / (10 * n) + 2);
      const double pivot = kth_smallest(scratch, m, j - 1, buffer);
      if (pivot < 1e200) {  // the products below stay finite
        int64_t c = 0;
        for (int64_t i = 0; i < n; ++i) {
          const auto [numerator, denominator] = squared_lower_key(i);
          cells.picked[c] = i;
          c += numerator <= pivot * denominator;
        }
        if (c >= k) {
          for (int64_t i = 0; i < c; ++i) scratch[i] = squared_lower_key_value(cells.picked[i]);
          cut = -std::sqrt(kth_smallest(scratch, c, k - 1, buffer));
          have_cut = true;
        }
      }
    }
    if (!have_cut) {
      for (int64_t i = 0; i < n; ++i) scratch[i] = lower_key(i);
      cut = kth_smallest(scratch, n, n - k, buffer);
    }
  }
  // 2. and 3. The candidates' exact keys, and the k largest.
  int64_t* picked = cells.picked.data();
  int64_t candidates = 0;
  for (int64_t i = 0; i < n; ++i) {  // branch-free
    picked[candidates] = i;
    candidates += !(uniforms[i] - 1.0 < cut * scale.apply(Weights::upper_of_positive(values[i])) * kMargin);
  }
  for (int64_t j = 0; j < candidates; ++j) {
    const int64_t i = picked[j];
    cells.best.emplace_back(key_from_uniform(uniforms[i], Weights::weight_of(values[i]), scale), cols[i]);
  }
  // The k largest keys, ties by column: the candidates are in column order.
  std::vector<Candidate>& best = cells.best;
  const int64_t count = static_cast<int64_t>(best.size());
  if (count > k) {
    double *keys = cells.scratch.data(), *buffer = cells.buffer.data();
    for (int64_t i = 0; i < count; ++i) keys[i] = best[i].first;
    const double kth_key = kth_smallest(keys, count, count - k, buffer);
    int64_t ties = k;  // how many keys equal to the k-th are taken
    for (int64_t i = 0; i < count; ++i) ties -= best[i].first > kth_key;
    int64_t taken = 0;
    for (int64_t i = 0; i < count; ++i) {
      const bool tie = best[i].first == kth_key && ties > 0;
      ties -= tie;
      best[taken] = best[i];
      taken += best[i].first > kth_key || tie;
    }
    best.resize(k);
  }
  return valid;
}

// Sorts a row's drawn columns: through a bitmap of the row's columns where
// it is small next to them, else by std::sort.
void sort_columns(int64_t* columns, int64_t count, int64_t num_cols, std::vector<uint64_t>& bits) {
  const int64_t words = (num_cols + 63) / 64;
  if (words > 4 * count) {
    std::sort(columns, columns + count);
    return;
  }
  bits.assign(words, 0);
  for (int64_t j = 0; j < count; ++j) bits[columns[j] >> 6] |= uint64_t{1} << (columns[j] & 63);
  int64_t j = 0;
  for (int64_t w = 0; w < words; ++w) {
    for (uint64_t word = bits[w]; word != 0; word &= word - 1) columns[j++] = 64 * w + __builtin_ctzll(word);
  }
}

template <typename Weights>
at::Tensor sample_rows(const Weights& weights, int64_t num_rows, int64_t num_cols, int64_t k, bool sorted,
                       uint64_t seed, int64_t first_row, const at::TensorOptions& options) {
  at::Tensor out = at::empty({num_rows, k}, options.dtype(at::kLong));
  int64_t* out_data = out.mutable_data_ptr<int64_t>();
  std::atomic<bool> saw_invalid{false};
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(num_cols, 1));
  at::parallel_for(0, num_rows, grain, [&](int64_t begin, int64_t end) {
    RowCells cells(num_cols);
    std::vector<uint64_t> bits;
    std::vector<Candidate>& best = cells.best;
    best.reserve(num_cols);
    for (int64_t row = begin; row < end; ++row) {
      if (!sample_row(weights, row, first_row + row, num_cols, k, seed, cells)) {
        saw_invalid.store(true, std::memory_order_relaxed);
      }
      if (!sorted) std::sort(best.begin(), best.end(), drawn_first);
      const int64_t taken = static_cast<int64_t>(best.size());
      int64_t* row_out = out_data + row * k;
      for (int64_t j = 0; j < taken; ++j) row_out[j] = best[j].second;
      if (sorted) sort_columns(row_out, taken, num_cols, bits);
      std::fill(row_out + taken, row_out + k, int64_t{-1});
    }
  });
  TORCH_CHECK_VALUE(!saw_invalid.load(), "sampling weights must be finite and non-negative (found a negative, ",
                    "infinite or NaN weight)");
  return out;
}

at::Tensor weighted_sample_cpu(const at::Tensor& weights, int64_t k, bool sorted,
                               const std::optional<at::Generator>& generator, int64_t first_row) {
  check_weighted_sample_inputs(weights, k, first_row);
  const at::Tensor w = weights.contiguous();
  const uint64_t seed = draw_seed(generator, w.device());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "weighted_sample_cpu", [&] {
    out = sample_rows(TensorWeights<scalar_t>{w.const_data_ptr<scalar_t>(), w.size(1)}, w.size(0), w.size(1), k,
                      sorted, seed, first_row, w.options());
  });
  return out;
}

at::Tensor discrepancy_sample_cpu(const at::Tensor& student_rank, const at::Tensor& teacher_rank, int64_t k,
                                  double mu, bool under, bool sorted, const std::optional<at::Generator>& generator,
                                  int64_t first_row) {
  check_discrepancy_sample_inputs(student_rank, teacher_rank, k, mu, first_row);
  const at::Tensor student = student_rank.contiguous();
  const auto [teacher, teacher_row_stride] = teacher_rows(teacher_rank);
  const uint64_t seed = draw_seed(generator, student.device());
  at::Tensor out;
  AT_DISPATCH_V2(
      student.scalar_type(), "discrepancy_sample_cpu", AT_WRAP([&] {
        const DiscrepancyWeights<scalar_t> weights{student.const_data_ptr<scalar_t>(),
                                                   teacher.const_data_ptr<scalar_t>(), student.size(1), mu, under,
                                                   teacher_row_stride};
        out = sample_rows(weights, student.size(0), student.size(1), k, sorted, seed, first_row, student.options());
      }),
      AT_EXPAND(AT_FLOATING_TYPES), at::kLong, at::kInt);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CPU, m) {
  m.impl("weighted_sample", &weighted_sample_cpu);
  m.impl("discrepancy_sample", &discrepancy_sample_cpu);
}

}  // namespace rankdistill
